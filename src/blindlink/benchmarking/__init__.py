"""Benchmark machinery: measurements that say how they were made, written as JSON results."""
