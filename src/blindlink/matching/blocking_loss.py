"""How many matches keyed blocking never compared, estimated from the run's own pairs.

A match is compared only if it shares at least one agreed blocking key, so partners whose
fields disagree on every key are never seen: recall estimated from the compared pairs alone
overstates the run's recall by that share. Each key is a combination of fields, and a pair
shares a key when it agrees (and has a value) on all of the key's fields. Taking each field's
agreement among matches as independent of the others' (the Fellegi-Sunter assumption), the
keys the matched pairs share tell how often each field agrees, and so how often a match agrees
on no key at all: the one pattern of shared keys that is never observed. The agreement rates
are fitted by expectation maximisation to the solved pairs, each weighted by its match
probability, with the unobserved pattern's count part of the fit (a truncated sample).

A key's field counts whole whatever its prefix. Where the keys do not determine the missed
share (one key, or fields that only ever appear together with the same other fields in a way
the patterns cannot separate), two fits from different starting points disagree, and no
estimate is made; nor with more than MAX_FIELDS fields in the keys.
"""

from __future__ import annotations

import itertools

import numpy as np

from blindlink.matching.blocking import KeyBlocking

ITERATIONS = 500
TOLERANCE = 1e-10
STARTS = (0.6, 0.95)  # agreement rates the two fits start from
AGREE = 1e-3  # largest difference between the two fits' missed shares that counts as agreement
MIN_PAIRS = 20.0  # expected matches below this: no estimate
MAX_FIELDS = 16  # the fit enumerates 2**fields agreement states; more fields: no estimate


def missed_share(
    blocking: KeyBlocking,
    shared_keys: np.ndarray,
    probabilities: np.ndarray,
) -> float | None:
    """The estimated share of matches that share no blocking key, from the solved pairs'
    shared keys (`shared_keys`: pairs x keys, bool) and match probabilities; None where the
    keys do not determine it or there are too few matches."""
    fields = sorted({part.field for key in blocking.keys for part in key})
    if len(blocking.keys) < 2 or len(fields) > MAX_FIELDS or probabilities.sum() < MIN_PAIRS:
        return None
    member = np.array([[f in {p.field for p in key} for f in fields] for key in blocking.keys])
    states = np.array(list(itertools.product((False, True), repeat=len(fields))))
    # Per state of the fields (agree or not), the pattern of shared keys it gives.
    weights = 1 << np.arange(len(blocking.keys))
    pattern_of_state = (states[:, None, :] | ~member[None, :, :]).all(axis=2) @ weights
    observed = np.bincount(
        shared_keys.astype(np.int64) @ weights,
        weights=probabilities,
        minlength=1 << len(blocking.keys),
    )
    observed[0] = 0.0  # compared pairs share a key; any others are not the matches counted
    fits = [_fit(states, pattern_of_state, observed, start) for start in STARTS]
    if abs(fits[0] - fits[1]) > AGREE:
        return None
    return float(np.mean(fits))


def _fit(
    states: np.ndarray, pattern_of_state: np.ndarray, observed: np.ndarray, start: float
) -> float:
    """The missed share under agreement rates fitted by EM from `start`: the expected count
    of the unobserved pattern (no key shared) is filled in at each step."""
    rates = np.full(states.shape[1], start)
    seen = observed.sum()
    missed = -1.0
    for _ in range(ITERATIONS):
        of_state = np.prod(np.where(states, rates, 1.0 - rates), axis=1)
        of_pattern = np.bincount(pattern_of_state, weights=of_state, minlength=len(observed))
        if abs(of_pattern[0] - missed) < TOLERANCE:
            break
        missed = float(of_pattern[0])
        counts = observed.copy()
        counts[0] = seen * missed / max(1.0 - missed, 1e-12)
        posterior = (
            counts[pattern_of_state] * of_state / np.maximum(of_pattern[pattern_of_state], 1e-300)
        )
        rates = np.clip(posterior @ states / posterior.sum(), 1e-9, 1.0 - 1e-9)
    return missed
