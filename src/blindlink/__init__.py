"""blindlink: privacy-preserving record matching between two parties under a signed agreement."""

__version__ = "0.1.0"
