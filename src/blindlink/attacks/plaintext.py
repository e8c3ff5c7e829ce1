"""What an attacker computes from plaintext: the same q-gram tokens clkhash would hash.

The attacker is assumed to know the linkage schema (it is named in the agreement), so it can
tokenise its own plaintext exactly as the parties' encoder does, field by field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from blindlink.encoding.schema import LinkageSchema


@dataclass(frozen=True)
class Tokens:
    """Records as rows of a sparse 0/1 matrix over a token vocabulary; a token is a field's
    q-gram, and its weight is the number of bits clkhash sets for it."""

    matrix: sparse.csr_matrix
    vocabulary: list[tuple[str, str]]  # (field identifier, token)
    weights: np.ndarray

    def __len__(self) -> int:
        return int(self.matrix.shape[0])


def record_tokens(row: Sequence[str], schema: LinkageSchema) -> list[tuple[str, str, int]]:
    """(field, token, bits per token) of every token clkhash hashes for `row`."""
    tokens: list[tuple[str, str, int]] = []
    for value, field in zip(row, schema.fields, strict=True):
        if field.hashing is None:
            continue
        grams = field.tokens(value)
        counts = field.hashing.strategy.bits_per_token(len(grams))
        tokens.extend((field.identifier, gram, k) for gram, k in zip(grams, counts, strict=True))
    return tokens


def tokenize(rows: Sequence[Sequence[str]], schema: LinkageSchema) -> Tokens:
    """The token matrix of `rows` (in schema column order)."""
    index: dict[tuple[str, str], int] = {}
    weights: list[int] = []
    indptr, indices = [0], []
    for row in rows:
        present = set()
        for field, gram, k in record_tokens(row, schema):
            key = (field, gram)
            if key not in index:
                index[key] = len(index)
                weights.append(k)
            present.add(index[key])
        indices.extend(sorted(present))
        indptr.append(len(indices))
    matrix = sparse.csr_matrix(
        (np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(rows), len(index))
    )
    return Tokens(matrix, list(index), np.asarray(weights, dtype=np.float32))


def weighted_dice(tokens: Tokens, rows: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Dice similarity of token sets, each token weighted by its bits per token: a plaintext
    stand-in for the Dice similarity of the records' encodings. Shape (len(rows),
    len(others))."""
    a = tokens.matrix[rows]
    b = tokens.matrix[others]
    shared = (a.multiply(tokens.weights) @ b.T).toarray()
    size_a = np.asarray(a @ tokens.weights).ravel()
    size_b = np.asarray(b @ tokens.weights).ravel()
    total = size_a[:, None] + size_b[None, :]
    return np.divide(2 * shared, total, out=np.zeros_like(shared), where=total > 0)
