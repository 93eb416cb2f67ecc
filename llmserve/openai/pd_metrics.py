"""Prometheus metrics of prefill/decode disaggregated serving (``llmserve_pd_*``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmserve.openai.relay import Outcome

PD_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                60)
KV_BYTES_BUCKETS = tuple(float(4**k) * 1024 for k in range(2, 14))  # 16 KiB .. 64 GiB


class PDMetrics:
    """Per-pool latencies, the hand-off and how each disaggregated request ended."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        labels = ["model_name"]
        self.prefill_ttft = Histogram(
            "llmserve_pd_prefill_time_to_first_token_seconds",
            "Prefill pool: from sending the prefill request to its answer (its one token)",
            labels, buckets=PD_BUCKETS_S, registry=r)
        self.decode_ttft = Histogram(
            "llmserve_pd_decode_time_to_first_token_seconds",
            "Decode pool: from sending the decode request to its first response bytes",
            labels, buckets=PD_BUCKETS_S, registry=r)
        self.decode_itl = Histogram(
            "llmserve_pd_decode_inter_token_latency_seconds",
            "Decode pool: mean time between generated tokens of a request",
            labels, buckets=PD_BUCKETS_S, registry=r)
        self.handoff = Histogram(
            "llmserve_pd_handoff_seconds",
            "From the prefill answer to the decode replica's first response bytes "
            "(KV transfer plus the first decode step)", labels, buckets=PD_BUCKETS_S,
            registry=r)
        self.kv_blocks = Counter(
            "llmserve_pd_kv_blocks_handed_off",
            "KV blocks the prefill engines offered to decode engines "
            "(remote_block_ids in kv_transfer_params)", labels, registry=r)
        self.requests = Counter(
            "llmserve_pd_requests",
            "Disaggregated requests by how they ended: ok, prefill_error, decode_error, "
            "client_left, rejected", [*labels, "outcome"], registry=r)
        self.in_flight = Gauge(
            "llmserve_pd_requests_in_flight",
            "Disaggregated requests between their arrival and the end of their decode answer",
            labels, registry=r)
        self.decode_retries = Counter(
            "llmserve_pd_decode_retries",
            "Decode requests sent to another decode replica because the first could not "
            "be reached (the KV was still on the prefill engine)", labels, registry=r)

        self.prefill_retries = Counter(
            "llmserve_pd_prefill_retries",
            "Prefill attempts lost because the replica died or could not be reached; the "
            "request goes to another prefill replica if one is left", labels, registry=r)

    def record_decode(self, model: str, decode: Outcome, prefill_done_s: float,
                      now_s: float) -> None:
        """``decode.started_s`` is when the decode request was sent."""
        if decode.first_chunk_s is None or decode.status != 200:
            return
        self.decode_ttft.labels(model).observe(decode.first_chunk_s - decode.started_s)
        self.handoff.labels(model).observe(decode.first_chunk_s - prefill_done_s)
        tokens = int((decode.usage or {}).get("completion_tokens") or 0)
        if tokens > 1:
            self.decode_itl.labels(model).observe((now_s - decode.first_chunk_s) / (tokens - 1))
