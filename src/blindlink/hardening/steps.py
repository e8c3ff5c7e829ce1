"""Hardening steps as the agreement names them: validation, output length, application.

A step is a small JSON object, `{"kind": ..., setting: value}`. Steps run in list order on
the encodings clkhash makes, except `salt`, which changes how clkhash keys each record and so
acts while encoding (it must come first). Keyed steps derive their keys from the linkage
secret, the step's kind and its position in the list.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from blindlink.canonical import canonical_json
from blindlink.encoding.clk_encoder import ClkEncoder, ValueProblem
from blindlink.encoding.schema import LinkageSchema
from blindlink.errors import BlindlinkError
from blindlink.hardening import transforms
from blindlink.hardening.keys import derive_key, keyed_permutation, keyed_taps


class HardeningError(BlindlinkError):
    """A hardening step list is invalid or cannot be applied to these encodings."""


def _integer(low: int, high: int) -> tuple[str, Any]:
    def check(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    return f"a whole number from {low} to {high}", check


def _probability(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 0.5


def _name(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


SALT_PARTS = ("year", "value")

# kind -> setting -> (what a valid value is, its check). Every setting is required.
_SETTINGS: dict[str, dict[str, tuple[str, Any]]] = {
    "xor_fold": {"folds": _integer(1, 8)},
    "balance": {},
    "rule90": {},
    "randomized_response": {"p": ("a probability in (0, 0.5]", _probability)},
    "diffusion": {"t": _integer(1, 64)},
    "salt": {
        "field": ("a column name of the schema", _name),
        "part": (f"one of {', '.join(SALT_PARTS)}", lambda v: v in SALT_PARTS),
    },
}
KINDS = tuple(_SETTINGS)


def validate_steps(steps: list[dict]) -> None:
    """Raise HardeningError naming the first bad step (by index) and key."""
    if not isinstance(steps, list):
        raise HardeningError("hardening: must be a list of steps")
    for index, step in enumerate(steps):
        _validate_step(index, step)
        if step["kind"] == "salt" and index:
            raise HardeningError(
                f"hardening[{index}].kind: a salt step acts while encoding, so it must be "
                "the first step (and there can be only one)"
            )


def _validate_step(index: int, step: Any) -> None:
    where = f"hardening[{index}]"
    if not isinstance(step, dict):
        raise HardeningError(f"{where}: each step must be an object with a 'kind'")
    kind = step.get("kind")
    if kind not in _SETTINGS:
        raise HardeningError(f"{where}.kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    settings = _SETTINGS[kind]
    for key in step:
        if key != "kind" and key not in settings:
            guess = difflib.get_close_matches(key, list(settings), n=1)
            hint = f" (did you mean '{guess[0]}'?)" if guess else ""
            raise HardeningError(f"{where}.{key}: unknown key for kind '{kind}'{hint}")
    for key, (expected, check) in settings.items():
        if key not in step:
            raise HardeningError(f"{where}.{key}: missing; '{kind}' needs {expected}")
        if not check(step[key]):
            raise HardeningError(f"{where}.{key}: must be {expected}, got {step[key]!r}")


def output_bit_length(bit_length: int, steps: list[dict]) -> int:
    """The length of the encodings after `steps`; raises if a step cannot apply."""
    validate_steps(steps)
    for index, step in enumerate(steps):
        bit_length = _step_output_length(index, step, bit_length)
    return bit_length


def _step_output_length(index: int, step: dict, bit_length: int) -> int:
    match step["kind"]:
        case "xor_fold":
            folds = step["folds"]
            if bit_length % (8 << folds):
                raise HardeningError(
                    f"hardening[{index}].folds: {bit_length} bits cannot be halved {folds} "
                    "time(s) into whole bytes"
                )
            return bit_length >> folds
        case "balance":
            return 2 * bit_length
        case "diffusion" if step["t"] > bit_length:
            raise HardeningError(
                f"hardening[{index}].t: larger than the {bit_length} bits it chooses from"
            )
    return bit_length


def apply_steps(encodings: np.ndarray, steps: list[dict], secret: bytes) -> np.ndarray:
    """Apply `steps` (salt excepted: it acts while encoding) to uint8 encodings of shape
    (records, bit_length // 8), bits in bitarray's big-endian order; same layout out."""
    if encodings.ndim != 2 or encodings.dtype != np.uint8:
        raise HardeningError("encodings must be a 2-D uint8 array, one row per record")
    output_bit_length(8 * encodings.shape[1], steps)
    bits = np.unpackbits(encodings, axis=1)
    for index, step in enumerate(steps):
        bits = _apply_step(index, step, bits, secret)
    return np.packbits(bits, axis=1)


def _apply_step(index: int, step: dict, bits: np.ndarray, secret: bytes) -> np.ndarray:
    width = bits.shape[1]
    key = derive_key(secret, step["kind"], str(index))
    match step["kind"]:
        case "xor_fold":
            return transforms.xor_fold(bits, step["folds"])
        case "balance":
            return transforms.balance(bits, keyed_permutation(key, 2 * width))
        case "rule90":
            return transforms.rule90(bits)
        case "randomized_response":
            return transforms.randomized_response(bits, float(step["p"]))
        case "diffusion":
            return transforms.diffuse(bits, keyed_taps(key, width, width, step["t"]))
    return bits  # salt: applied while encoding


def salt_values(
    rows: Sequence[Sequence[str]], columns: list[str], steps: list[dict]
) -> list[str] | None:
    """Each row's salt (the named part of its salt field; "" when missing), or None when there
    is no salt step."""
    validate_steps(steps)
    if not steps or steps[0]["kind"] != "salt":
        return None
    step = steps[0]
    if step["field"] not in columns:
        raise HardeningError(f"hardening[0].field: the schema has no column '{step['field']}'")
    column = columns.index(step["field"])
    if step["part"] == "value":
        return [row[column] for row in rows]
    return [_year(row[column], step["field"]) for row in rows]


_YEAR_FIRST_DATE = re.compile(r"(\d{4})[-/.]?\d{2}[-/.]?\d{2}")


def _year(value: str, field: str) -> str:
    if not value:
        return ""
    found = _YEAR_FIRST_DATE.fullmatch(value)
    if found is None:
        # The value itself stays out of the message: it is identity data.
        raise HardeningError(
            f"hardening[0].part: 'year' needs dates written year first (YYYY-MM-DD or "
            f"YYYYMMDD), and a value in column '{field}' is not"
        )
    return found.group(1)


def salted_secret(secret: bytes, step: dict, salt: str) -> bytes:
    """The clkhash secret for records whose salt is `salt`."""
    return derive_key(secret, "salt", step["field"], step["part"], salt)


def encode_with_steps(
    rows: Sequence[Sequence[str]], schema: LinkageSchema, secret: bytes, steps: list[dict]
) -> np.ndarray:
    """clkhash encodings of `rows` (schema column order), salted per record if a salt step
    says so, then hardened by the other steps; uint8, one row per record."""
    width = schema.bit_length // 8
    salts = salt_values(rows, schema.columns, steps)
    if salts is None:
        encoded = _clkhash(rows, schema, secret)
    else:
        groups: defaultdict[str, list[int]] = defaultdict(list)
        for row, salt in enumerate(salts):
            groups[salt].append(row)
        encoded = np.empty((len(rows), width), dtype=np.uint8)
        for salt, members in groups.items():
            group_secret = salted_secret(secret, steps[0], salt)
            encoded[members] = _clkhash([rows[i] for i in members], schema, group_secret)
    return apply_steps(encoded, steps, secret)


def _clkhash(rows: Sequence[Sequence[str]], schema: LinkageSchema, secret: bytes) -> np.ndarray:
    """clkhash encodings of valid rows, one row per record."""
    encoded = ClkEncoder(schema, secret).encode(rows)
    if isinstance(encoded, ValueProblem):
        raise HardeningError(
            f"row {encoded.row}, field '{encoded.field}' is invalid: {encoded.message}"
        )
    return np.frombuffer(encoded, dtype=np.uint8).reshape(len(rows), schema.bit_length // 8)


def encodings_id(
    schema_sha256: str, steps: list[dict], blocking_keys: list[list[dict]] | None = None
) -> str:
    """What an encodings file's header names as its origin: the schema's hash, or, with
    hardening or blocking keys, the hash of the schema's hash, the steps and the keys. The
    server compares it with the agreement, so uploads made otherwise are refused."""
    if not steps and not blocking_keys:
        return schema_sha256
    made_with: dict[str, Any] = {"schema_sha256": schema_sha256, "hardening": steps}
    if blocking_keys:
        made_with["blocking_keys"] = blocking_keys
    return hashlib.sha256(canonical_json(made_with)).hexdigest()
