"""vLLM's OpenAI-compatible server as an engine (and the simulator, which speaks its dialect)."""
