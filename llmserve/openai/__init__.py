"""The OpenAI-compatible HTTP ingress: auth, validation, routing, relaying to engines."""
