"""The hardening transformations on bit matrices: one row per record, one uint8 0/1 per bit."""

from __future__ import annotations

import os

import numpy as np

# Flip decisions compare 32-bit random words with p * 2**32, so p is resolved to 2**-32.
_WORD = 2**32


def xor_fold(bits: np.ndarray, folds: int) -> np.ndarray:
    """Halve the length `folds` times, each time XORing the first half with the second."""
    for _ in range(folds):
        half = bits.shape[1] // 2
        bits = bits[:, :half] ^ bits[:, half:]
    return bits


def balance(bits: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    """Append the complement of every bit, then reorder the doubled row by `permutation`:
    every record then has exactly half its bits set."""
    return np.concatenate([bits, 1 - bits], axis=1)[:, permutation]


def rule90(bits: np.ndarray) -> np.ndarray:
    """Each bit becomes the XOR of its two neighbours (cyclic): Wolfram's rule 90."""
    return np.roll(bits, 1, axis=1) ^ np.roll(bits, -1, axis=1)


def randomized_response(bits: np.ndarray, p: float) -> np.ndarray:
    """Flip each bit independently with probability `p`, with fresh randomness from the
    operating system's cryptographic generator: two calls on the same input differ."""
    words = np.frombuffer(os.urandom(4 * bits.size), dtype=np.uint32).reshape(bits.shape)
    return bits ^ (words < round(p * _WORD)).astype(np.uint8)


def diffuse(bits: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Output bit j is the XOR of the input bits at `taps[j]` (Armknecht, Heng, Schnell,
    PoPETs 2023)."""
    out = np.zeros((bits.shape[0], taps.shape[0]), dtype=np.uint8)
    for column in taps.T:
        out ^= bits[:, column]
    return out
