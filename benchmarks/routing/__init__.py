"""Routing benchmarks: llmserve's policies against vllm-router on one simulated cluster."""
