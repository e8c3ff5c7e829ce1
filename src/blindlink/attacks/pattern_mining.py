"""Pattern-mining attack: surnames from the encodings alone, with a public name-frequency list.

The attacker holds the encodings, the linkage schema and clkhash's public name tables; no
plaintext of any encoded person and no known pairs. It follows the pattern-mining
cryptanalysis of Christen, Vidanage, Ranbaduge and Schnell (PAKDD 2018), with Kroll and
Steinmetzer's atoms (2015):

1. **Atoms.** A q-gram hashed into k positions sets all k in every record that holds it, so
   those positions covary. From the most covariant pair of positions, grow the k positions most
   covariant with the set, then close the pattern: its records are those holding most of it,
   its positions those set in nearly all of its records. The atom's record indicator is then
   regressed out of the covariance, so the next search finds a different q-gram.
2. **Families.** A name opens with exactly one padded q-gram (" S") and closes with exactly one
   ("h "), so the atoms of one field's openings never share a record, nor do its closings:
   greedy cliques of mutually exclusive atoms.
3. **Labels.** The two most dependent families are one field's openings and closings. Which
   field they are, which is which, and which atom is which q-gram are chosen to match the
   public list's joint frequencies of openings and closings (alternating Hungarian assignment
   of the two families, starting from single-q-gram frequencies).
4. **Re-identification.** A record's labelled surname atoms select the public surnames with
   exactly those openings and closings; the attack guesses the most frequent, and is confident
   when that name holds at least half of their population share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from blindlink.attacks.name_tables import NameTable, given_name_table, surname_table
from blindlink.attacks.result import AttackResult
from blindlink.encoding.fields import NgramComparison
from blindlink.encoding.schema import LinkageSchema

MAX_ATOMS = 300
# Mining stops when the best remaining covariance is within this many standard errors of 0.
STOP_SIGMAS = 4.0
# Without bit flips, a record holds an atom if it has at least PRESENCE of the atom's positions
# set, and a position belongs to an atom if at least CLOSURE of the atom's records set it. An
# attacker who knows (from the agreement) that bits are flipped with probability p lowers both
# by p.
PRESENCE = 0.9
CLOSURE = 0.95
MIN_RECORDS = 10  # a pattern held by fewer records is noise
MIN_SUPPORT = 0.01  # atoms rarer than this are too noisy to label
# Exclusive: seen together at most this share of the independence expectation...
EXCLUSIVE_RATIO = 0.1
# ...where independence would expect at least this many records with both.
EXCLUSIVE_MIN_EXPECTED = 10
MIN_FAMILY = 4
LABEL_ROUNDS = 20
# Relative error allowed between public-list frequencies and the encoded population's.
MODEL_ERROR = 0.1


@dataclass(frozen=True)
class Atom:
    """Bit positions that one q-gram sets, and the records that hold it."""

    positions: np.ndarray
    members: np.ndarray  # bool per record


def mine_atoms(
    bits: np.ndarray, size: int, flip: float = 0.0, max_atoms: int = MAX_ATOMS
) -> list[Atom]:
    """Atoms of `size` positions in 0/1 rows `bits` (bits flipped with probability `flip`),
    most covariant first."""
    n = len(bits)
    ones = bits.astype(np.float32)
    centred = ones - ones.mean(0)
    residual = centred.T @ centred / n
    np.fill_diagonal(residual, 0)
    blocked = np.eye(residual.shape[0], dtype=bool)
    stop = STOP_SIGMAS * 0.25 / np.sqrt(n)  # 0.25/sqrt(n): sd of a covariance of fair bits
    basis = np.zeros((max_atoms, n), dtype=np.float32)  # orthonormal rows, one per atom
    atoms: list[Atom] = []
    while len(atoms) < max_atoms:
        i, j = np.unravel_index(np.argmax(np.where(blocked, -np.inf, residual)), residual.shape)
        if residual[i, j] < stop:
            break
        grown = _grow(residual, int(i), int(j), size)
        blocked[np.ix_(grown[:2], grown[:2])] = True
        atom = _close(ones, grown, size, PRESENCE - flip, CLOSURE - flip)
        if atom is None or any((atom.members == a.members).mean() > 0.995 for a in atoms):
            blocked[np.ix_(grown, grown)] = True  # a pattern already found: seed elsewhere
            continue
        direction = _orthonormal(atom.members, basis[: len(atoms)])
        if direction is None:
            continue
        basis[len(atoms)] = direction
        explained = centred.T @ direction
        residual -= np.outer(explained, explained) / n
        atoms.append(atom)
    return atoms


def _grow(residual: np.ndarray, i: int, j: int, size: int) -> np.ndarray:
    chosen = [i, j]
    total = residual[:, i] + residual[:, j]
    while len(chosen) < size:
        total[chosen] = -np.inf
        k = int(np.argmax(total))
        chosen.append(k)
        total = total + residual[:, k]
    return np.array(chosen)


def _close(
    ones: np.ndarray, positions: np.ndarray, size: int, presence: float, closure: float
) -> Atom | None:
    """Alternate between the records holding the pattern and the positions they all set."""
    for _ in range(8):
        members = ones[:, positions].mean(1) >= presence
        count = int(members.sum())
        if count < MIN_RECORDS:
            return None
        closed = np.flatnonzero(ones[members].sum(0) >= closure * count)
        if len(closed) < size // 2 or set(closed) == set(positions):
            break
        positions = closed
    # A token that always comes with this one (the sex token with a female name's final "a")
    # closes the pattern too; keep the positions least often set outside the atom's records.
    outside = ones[:, positions].sum(0) - ones[members][:, positions].sum(0)
    positions = np.sort(positions[np.argsort(outside, kind="stable")[:size]])
    return Atom(positions, ones[:, positions].mean(1) >= presence)


def _orthonormal(members: np.ndarray, basis: np.ndarray) -> np.ndarray | None:
    """The centred indicator `members` made orthogonal to the rows of `basis`, unit length
    (None when it is a combination of them). Gram-Schmidt twice, for numerical stability."""
    vector = members.astype(np.float32)
    vector -= vector.mean()
    for _ in range(2):
        vector -= basis.T @ (basis @ vector)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 1e-3 * np.sqrt(len(vector)) else None


def exclusive_families(members: np.ndarray) -> list[list[int]]:
    """Greedy cliques of atoms (columns of `members`) that never share a record, largest
    first."""
    n = len(members)
    counts = members.astype(np.float32)
    support = counts.mean(0)
    expected = np.outer(support, support) * n
    exclusive = ((counts.T @ counts) <= EXCLUSIVE_RATIO * expected) & (
        expected >= EXCLUSIVE_MIN_EXPECTED
    )
    order = np.argsort(-support, kind="stable").tolist()
    used: set[int] = set()
    families = []
    for seed in order:
        if seed in used:
            continue
        family = [seed]
        for atom in order:
            if atom not in used and atom not in family and exclusive[atom, family].all():
                family.append(atom)
        if len(family) >= MIN_FAMILY:
            families.append(family)
            used.update(family)
    return sorted(families, key=len, reverse=True)


@dataclass(frozen=True)
class _Labels:
    """Atom -> token index of one field's table, and how badly the labels fit the list."""

    tokens: dict[int, int]
    cost: float


def _label_families(
    members: np.ndarray, opening: list[int], closing: list[int], table: NameTable, q: int
) -> _Labels:
    """Label an opening and a closing family with the table's padded q-grams."""
    n = len(members)
    starts, ends = table.edge_tokens(q, end=False), table.edge_tokens(q, end=True)
    if not starts or not ends:
        return _Labels({}, np.inf)
    support = members.mean(0)
    counts = members.astype(np.float32)
    observed = counts[:, opening].T @ counts[:, closing] / n
    expected_share = np.sort(table.token_frequency[starts])[::-1][: len(opening)].sum()
    coverage = support[opening].sum() / expected_share  # records with the field present
    joint = table.joint_frequency(starts, ends) * coverage
    start_freq = table.token_frequency[starts] * coverage
    end_freq = table.token_frequency[ends] * coverage
    end_label = np.array([np.argmin(abs(end_freq - support[a])) for a in closing])
    for _ in range(LABEL_ROUNDS):
        start_label, start_cost = _assign(
            observed, support[opening], joint, start_freq, end_label, n
        )
        end_label, end_cost = _assign(
            observed.T, support[closing], joint.T, end_freq, start_label, n
        )
    tokens = {a: starts[t] for a, t in zip(opening, start_label, strict=True) if t >= 0}
    tokens |= {a: ends[t] for a, t in zip(closing, end_label, strict=True) if t >= 0}
    return _Labels(tokens, start_cost + end_cost)


def _assign(
    observed: np.ndarray,
    support: np.ndarray,
    joint: np.ndarray,
    frequency: np.ndarray,
    other_labels: np.ndarray,
    n: int,
) -> tuple[np.ndarray, float]:
    """Best 1:1 labels for one family given the other's: squared standardised differences of
    the joint frequencies with the other family's atoms, plus of the atom's own frequency."""
    known = other_labels >= 0
    predicted = joint[:, other_labels[known]]  # candidates x labelled atoms of the other family
    variance = predicted / n + (MODEL_ERROR * predicted) ** 2 + 1e-6
    cost = ((observed[:, None, known] - predicted[None]) ** 2 / variance[None]).sum(2)
    own_variance = frequency / n + (MODEL_ERROR * frequency) ** 2 + 1e-6
    cost += (support[:, None] - frequency[None]) ** 2 / own_variance[None]
    rows, cols = linear_sum_assignment(cost)
    labels = np.full(len(observed), -1)
    labels[rows] = cols
    return labels, float(cost[rows, cols].sum())


def _dependence(members: np.ndarray, a: list[int], b: list[int]) -> float:
    """Chi-square of the two families' co-occurrence against independence."""
    n = len(members)
    counts = members.astype(np.float32)
    observed = counts[:, a].T @ counts[:, b]
    expected = np.outer(counts[:, a].sum(0), counts[:, b].sum(0)) / n + 1e-9
    return float(((observed - expected) ** 2 / expected).sum())


def label_surname_atoms(
    members: np.ndarray, surnames: NameTable, given_names: NameTable | None, q: int
) -> dict[int, int]:
    """Atom -> surname token index, for the atoms of the surname field's opening and closing
    families (empty when the families are not found)."""
    families = exclusive_families(members)[:4] if members.shape[1] else []
    if len(families) < 2:
        return {}
    pairs = sorted(
        ((a, b) for a in range(len(families)) for b in range(a + 1, len(families))),
        key=lambda p: -_dependence(members, families[p[0]], families[p[1]]),
    )
    first = pairs[0]
    rest = [i for i in range(len(families)) if i not in first]
    groups = [(families[first[0]], families[first[1]])]
    if len(rest) == 2:
        groups.append((families[rest[0]], families[rest[1]]))

    def fit(group: tuple[list[int], list[int]], table: NameTable) -> _Labels:
        one, other = group
        options = (
            _label_families(members, one, other, table, q),
            _label_families(members, other, one, table, q),
        )
        return min(options, key=lambda labels: labels.cost)

    if given_names is None:
        return fit(groups[0], surnames).tokens
    fits = [(fit(group, surnames), fit(group, given_names)) for group in groups]
    if len(groups) == 1:
        surname, given = fits[0]
        return surname.tokens if surname.cost <= given.cost else {}
    # Two pairs of families: the surname table takes the pair for which the two tables, one
    # per pair, fit best together.
    first_is_surname = fits[0][0].cost + fits[1][1].cost
    second_is_surname = fits[1][0].cost + fits[0][1].cost
    return (fits[0] if first_is_surname <= second_is_surname else fits[1])[0].tokens


def guess_surnames(
    members: np.ndarray, labels: dict[int, int], surnames: NameTable
) -> tuple[list[str | None], np.ndarray]:
    """Per record, the most frequent public surname whose labelled q-grams are exactly the
    record's labelled atoms (None when none fits), and that name's share of the fitting names."""
    atoms = sorted(labels)
    guesses: list[str | None] = [None] * len(members)
    shares = np.zeros(len(members))
    if not atoms:
        return guesses, shares
    signatures = np.asarray(surnames.incidence[:, [labels[a] for a in atoms]].todense()) > 0
    best: dict[bytes, tuple[str, float]] = {}
    totals: dict[bytes, float] = {}
    for name, share, signature in zip(surnames.names, surnames.shares, signatures, strict=True):
        key = signature.tobytes()
        totals[key] = totals.get(key, 0.0) + share
        if key not in best or share > best[key][1]:
            best[key] = (name, share)
    held = members[:, atoms]
    for row in np.flatnonzero(held.any(1)):
        key = held[row].tobytes()
        if key in best:
            guesses[row] = best[key][0]
            shares[row] = best[key][1] / totals[key]
    return guesses, shares


def pattern_mining_attack(
    encodings: np.ndarray,
    true_surnames: Sequence[str],
    schema: LinkageSchema,
    flip: float = 0.0,
    surname_field: str = "surname",
    given_name_field: str = "given_name",
) -> AttackResult:
    """Guess each encoded record's surname; score against `true_surnames` (one per row of the
    packed uint8 `encodings`) over the records whose surname is on the public list. `flip` is
    the bit-flip probability the attacker knows the encodings to have (randomized response)."""
    fields = {f.identifier: f.hashing for f in schema.fields if f.hashing}
    surname_hashing = fields[surname_field]
    comparator = surname_hashing.comparison
    # Opening and closing q-grams are recognisable only in padded, non-positional q-grams.
    q = comparator.n if isinstance(comparator, NgramComparison) and not comparator.positional else 0
    surnames = surname_table(comparator.tokenize)
    given = (
        given_name_table(fields[given_name_field].comparison.tokenize)
        if given_name_field in fields
        else None
    )
    size = surname_hashing.strategy.bits_per_token(1)[0]
    members = _atom_members(np.unpackbits(encodings, axis=1), size, flip)
    labels = label_surname_atoms(members, surnames, given, q) if q >= 2 else {}
    guesses, shares = guess_surnames(members, labels, surnames)
    return score_surname_guesses(guesses, shares, true_surnames, surnames)


def _atom_members(bits: np.ndarray, size: int, flip: float) -> np.ndarray:
    """Which records hold each full-size atom of at least MIN_SUPPORT (records x atoms)."""
    columns = [a.members for a in mine_atoms(bits, size, flip) if len(a.positions) == size]
    members = np.column_stack(columns) if columns else np.zeros((len(bits), 0), dtype=bool)
    return members[:, members.mean(0) >= MIN_SUPPORT]


def score_surname_guesses(
    guesses: Sequence[str | None],
    shares: np.ndarray,
    true_surnames: Sequence[str],
    surnames: NameTable,
) -> AttackResult:
    """Score guesses over the records whose true surname is on the public list."""
    listed = set(surnames.names)
    targets = [i for i, name in enumerate(true_surnames) if name in listed]
    made = [i for i, guess in enumerate(guesses) if guess is not None]
    right = {i for i in made if guesses[i] == true_surnames[i]}
    confident = [i for i in made if shares[i] >= 0.5]
    commonest = surnames.names[int(np.argmax(surnames.shares))]
    chance = sum(true_surnames[i] == commonest for i in targets) / len(targets) if targets else 0.0
    return AttackResult(
        attack="pattern_mining",
        targets=len(targets),
        guesses=len(made),
        correct=len(right),
        confident=len(confident),
        confident_correct=sum(i in right for i in confident),
        chance_rate=chance,
    )
