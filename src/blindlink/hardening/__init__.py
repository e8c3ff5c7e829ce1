"""Hardening of encodings: transformations both parties apply identically, named in the
agreement's `encoding.hardening` array and applied in its order."""

from blindlink.hardening.steps import (
    HardeningError,
    apply_steps,
    encode_with_steps,
    output_bit_length,
    salt_values,
    validate_steps,
)

__all__ = [
    "HardeningError",
    "apply_steps",
    "encode_with_steps",
    "output_bit_length",
    "salt_values",
    "validate_steps",
]
