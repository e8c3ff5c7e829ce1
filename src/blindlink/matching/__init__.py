"""Matching encodings: candidate generation with anonlink and 1:1 solving."""
