"""Benchmarks: they print figures and ratios measured in one run, they do not pass or fail."""
