"""Benchmark machinery: generated data, measurements that say how they were made, results
written as JSON, and the accuracy / privacy tradeoff sweep (`tradeoff_benchmark`)."""
