"""Helpers the tests share: a test module imports them from here, never from another test
module."""
