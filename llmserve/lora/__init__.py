"""Multi-LoRA serving: adapter folders (local or S3), names, validation, on-demand loading
into engine replicas with a per-replica LRU, and the metrics of it all."""
