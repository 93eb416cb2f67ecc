"""LoRA multiplexing benchmark: adapter-aware routing against adapter-blind and Ray's rule."""
