"""Tracking workload: dataset readers, synthetic data, the tracker loop, result files, metrics."""
