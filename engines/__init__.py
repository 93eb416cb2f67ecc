"""Engine adapters: vllm, sglang, sim (+ protocol)."""
