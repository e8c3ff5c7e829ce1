"""Synthetic custodian and requester CSV files with known true matches, for demos and benchmarks."""

from blindlink.synthetic.corruption import CorruptionRates
from blindlink.synthetic.datasets import (
    GeneratedBatches,
    GeneratedFiles,
    generate_batches,
    generate_datasets,
)

__all__ = [
    "CorruptionRates",
    "GeneratedBatches",
    "GeneratedFiles",
    "generate_batches",
    "generate_datasets",
]
