"""Benchmarks and the load generator (``llmserve bench``)."""
