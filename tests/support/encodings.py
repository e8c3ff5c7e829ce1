"""Encodings for tests: random rows, rows with planted matches, keyed rows, encodings files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from blindlink.encoding.encodings_file import write_encodings

BITS = 1024
BYTES = BITS // 8


def random_rows(n: int, seed: int, bits: int = BITS) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, bits // 8), dtype=np.uint8)


def planted_pairs(
    n: int, shared: int, seed: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Requester and custodian encodings (n each, random) where `shared` requester rows appear
    again among the custodian's: (requester, custodian, [(requester row, custodian row)])."""
    rng = np.random.default_rng(seed)
    requester = rng.integers(0, 256, size=(n, BYTES), dtype=np.uint8)
    custodian = rng.integers(0, 256, size=(n, BYTES), dtype=np.uint8)
    requester_rows = rng.choice(n, shared, replace=False)
    custodian_rows = rng.choice(n, shared, replace=False)
    custodian[custodian_rows] = requester[requester_rows]
    pairs = sorted(zip(requester_rows.tolist(), custodian_rows.tolist(), strict=True))
    return requester, custodian, pairs


def encodings_file(path: Path, rows: np.ndarray, schema_sha256: str) -> Path:
    write_encodings(path, rows.shape[1] * 8, schema_sha256, [rows.tobytes()])
    return path


def keyed_rows(encodings: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Records as uploaded: each encoding followed by its keys."""
    return np.hstack([encodings, keys.astype("<u8").view(np.uint8)])
