"""SGLang's OpenAI-compatible server as an engine."""
