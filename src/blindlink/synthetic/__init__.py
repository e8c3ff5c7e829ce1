"""Synthetic requester/custodian CSV files with known true matches, for demos and benchmarks."""

from blindlink.synthetic.corruption import CorruptionRates
from blindlink.synthetic.datasets import GeneratedFiles, generate_datasets

__all__ = ["CorruptionRates", "GeneratedFiles", "generate_datasets"]
