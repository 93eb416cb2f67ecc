"""The five llmserve dashboards, as lists of panel specifications."""

from __future__ import annotations

from dashboards.panels import RATE, M, PanelSpec, Query, RowSpec, quantiles, rate_by

REQUESTS_BY_STATUS = PanelSpec(
    "Request rate by status", (rate_by("llmserve_requests_total", "status"),), "reqps",
    "Requests per second at the gateway, by HTTP status (499: the client left).")
ERROR_RATIO = PanelSpec(
    "Error ratio (5xx)",
    (Query(f'(sum(rate(llmserve_requests_total{{{M}, status=~"5.."}}{RATE})) or vector(0))'
           f" / clamp_min(sum(rate(llmserve_requests_total{{{M}}}{RATE})), 1e-9)", "5xx"),),
    "percentunit", "Share of gateway requests answered with a 5xx status.")
TTFT = PanelSpec("Time to first token (gateway, streamed)",
                 quantiles("llmserve_time_to_first_token_seconds"), "s",
                 "From arrival at the gateway to the first streamed bytes, as clients see it.")
ITL = PanelSpec("Inter-token latency (gateway)",
                quantiles("llmserve_inter_token_latency_seconds"), "s",
                "Mean gap between tokens of streamed requests that report usage.")
E2E = PanelSpec("End-to-end latency (gateway)",
                quantiles("llmserve_e2e_request_latency_seconds"), "s",
                "From arrival to the last byte sent, relayed requests.")
TOKENS = PanelSpec(
    "Tokens per second",
    (Query(f"sum(rate(llmserve_prompt_tokens_total{{{M}}}{RATE}))", "prompt"),
     Query(f"sum(rate(llmserve_generation_tokens_total{{{M}}}{RATE}))", "generated")),
    "short", "Prompt and generated tokens per second, from the engines' usage reports.")
IN_FLIGHT = PanelSpec(
    "Requests in flight",
    (Query(f"sum by (model_name) (llmserve_requests_in_flight{{{M}}})", "{{model_name}}"),),
    "short")
REPLICAS_READY = PanelSpec(
    "Ready replicas",
    (Query(f"sum by (model_name) (llmserve_replica_ready{{{M}}})", "{{model_name}}"),),
    "short", "Engine replicas the gateway routes to.")
KV_USAGE = PanelSpec(
    "KV-cache usage per replica",
    (Query(f"max by (replica) (vllm:kv_cache_usage_perc{{{M}}})", "{{replica}}"),),
    "percentunit", "From each engine's own metrics.")
RUNNING = PanelSpec(
    "Running requests per replica",
    (Query(f"sum by (replica) (vllm:num_requests_running{{{M}}})", "{{replica}}"),), "short")
WAITING = PanelSpec(
    "Waiting requests per replica",
    (Query(f"sum by (replica) (vllm:num_requests_waiting{{{M}}})", "{{replica}}"),), "short")
PREFIX_HIT_RATE = PanelSpec(
    "Prefix-cache hit rate per replica",
    (Query(f"sum by (replica) (rate(vllm:prefix_cache_hits_total{{{M}}}{RATE})) / "
           f"clamp_min(sum by (replica) (rate(vllm:prefix_cache_queries_total{{{M}}}{RATE})),"
           " 1)", "{{replica}}"),),
    "percentunit", "Prompt tokens found in the engine's prefix cache, of those looked up.")
ROUTING_OUTCOMES = PanelSpec(
    "Routing decisions by outcome",
    (rate_by("llmserve_routing_decisions_total", "outcome"),), "ops",
    "hit: sent where its longest prefix is cached; miss: cached nowhere; spill: moved by a "
    "guard; single: one replica; ranked: a policy without prefixes.")

OVERVIEW = (
    REQUESTS_BY_STATUS, ERROR_RATIO, TTFT, E2E, TOKENS, IN_FLIGHT, REPLICAS_READY, KV_USAGE,
)

GATEWAY = (
    REQUESTS_BY_STATUS,
    PanelSpec("Request rate by route", (rate_by("llmserve_requests_total", "route"),), "reqps"),
    PanelSpec("Rejections by reason",
              (rate_by("llmserve_rejections_total", "reason"),), "reqps",
              "401 unauthorized, 413 body too large, 429 too many requests, 503 unavailable."),
    ERROR_RATIO, TTFT, ITL, E2E, TOKENS, IN_FLIGHT,
    PanelSpec("Gateway requests in flight per replica",
              (Query(f"sum by (replica) (llmserve_replica_requests_in_flight{{{M}}})",
                     "{{replica}}"),), "short"),
    RowSpec("LoRA adapters"),
    PanelSpec("LoRA: adapter loads and evictions",
              (Query(f"sum(rate(llmserve_lora_adapter_loads_total{{{M}}}{RATE}))", "loads"),
               Query(f"sum(rate(llmserve_lora_adapter_evictions_total{{{M}}}{RATE}))",
                     "evictions")), "ops",
              "Adapters loaded into engine replicas, and unloaded to make room (LRU)."),
    PanelSpec("LoRA: adapters resident per replica",
              (Query(f"sum by (replica) (llmserve_lora_adapters_resident{{{M}}})",
                     "{{replica}}"),), "short",
              "Adapters loaded on each engine replica (model_name: the base model)."),
    PanelSpec("LoRA: requests by adapter residency",
              (rate_by("llmserve_lora_requests_total", "resident"),), "reqps",
              "true: the adapter was already on the chosen replica; false: loaded first."),
    PanelSpec("LoRA: adapter load time", quantiles("llmserve_lora_adapter_load_seconds"), "s",
              "Fetch, check and load into a replica."),
    PanelSpec("LoRA: adapter downloads",
              (rate_by("llmserve_lora_adapter_downloads_total", "model_name"),), "ops",
              "Adapters copied from remote storage into the node's cache."),
    PanelSpec("LoRA: adapter load failures",
              (rate_by("llmserve_lora_adapter_load_failures_total", "model_name"),), "ops",
              "Adapter fetches, checks or engine loads that failed."),
    RowSpec("Prefill/decode disaggregation"),
    PanelSpec("P/D: requests in flight",
              (Query(f"sum by (model_name) (llmserve_pd_requests_in_flight{{{M}}})",
                     "{{model_name}}"),), "short",
              "Disaggregated requests between arrival and the end of their decode answer."),
    PanelSpec("P/D: requests by outcome",
              (rate_by("llmserve_pd_requests_total", "outcome"),), "reqps"),
    PanelSpec("P/D: prefill and decode time to first token",
              (Query(quantiles("llmserve_pd_prefill_time_to_first_token_seconds")[1].expr,
                     "prefill p90"),
               Query(quantiles("llmserve_pd_decode_time_to_first_token_seconds")[1].expr,
                     "decode p90")), "s",
              "p90 of each pool, for models with separate prefill and decode pools."),
    PanelSpec("P/D: KV hand-off", quantiles("llmserve_pd_handoff_seconds"), "s",
              "From the prefill answer to the decode replica's first bytes."),
    PanelSpec("P/D: decode inter-token latency",
              quantiles("llmserve_pd_decode_inter_token_latency_seconds"), "s"),
    PanelSpec("P/D: KV blocks handed off",
              (Query(f"sum(rate(llmserve_pd_kv_blocks_handed_off_total{{{M}}}{RATE}))",
                     "blocks"),), "ops",
              "KV blocks the prefill engines offered to decode engines."),
    PanelSpec("P/D: retries",
              (Query("sum by (model_name) (rate(llmserve_pd_prefill_retries_total"
                     f"{{{M}}}{RATE}))", "prefill {{model_name}}"),
               Query("sum by (model_name) (rate(llmserve_pd_decode_retries_total"
                     f"{{{M}}}{RATE}))", "decode {{model_name}}")), "ops",
              "Prefills sent to another prefill replica (the first failed before answering) "
              "and decodes sent to another decode replica (the first was unreachable)."),
)

ENGINES = (
    RUNNING, WAITING, KV_USAGE,
    PanelSpec("Engine time to first token", quantiles("vllm:time_to_first_token_seconds"),
              "s"),
    PanelSpec("Engine inter-token latency", quantiles("vllm:inter_token_latency_seconds"),
              "s"),
    PanelSpec("Engine end-to-end latency", quantiles("vllm:e2e_request_latency_seconds"),
              "s"),
    PanelSpec("Generated tokens per second per replica",
              (rate_by("vllm:generation_tokens_total", "replica"),), "short"),
    PanelSpec("Prompt tokens per second per replica",
              (rate_by("vllm:prompt_tokens_total", "replica"),), "short"),
    PanelSpec("Finished requests by reason",
              (rate_by("vllm:request_success_total", "finished_reason"),), "reqps"),
    PanelSpec("Preemptions", (rate_by("vllm:num_preemptions_total", "replica"),), "ops"),
    PanelSpec("Engine restarts",
              (Query(f"sum by (replica) (increase(llmserve_engine_restarts_total{{{M}}}"
                     f"{RATE}))", "{{replica}}"),), "short",
              "Engine processes restarted by their replica after exiting."),
)

ROUTING = (
    ROUTING_OUTCOMES,
    PanelSpec("Prefix hit share of routed requests",
              (Query(f'(sum(rate(llmserve_routing_decisions_total{{{M}, outcome="hit"}}{RATE}))'
                     f" or vector(0)) / clamp_min(sum(rate(llmserve_routing_decisions_total{{{M}, "
                     f'outcome=~"hit|miss|spill"}}{RATE})), 1e-9)', "hit share"),),
              "percentunit", "Of the decisions among several replicas by a prefix policy."),
    PanelSpec("Spills by guard",
              (Query(f'sum by (guard) (rate(llmserve_routing_decisions_total{{{M}, '
                     f'outcome="spill"}}{RATE}))', "{{guard}}"),), "ops",
              "Requests moved off the replica holding their prefix, by the guard that did."),
    PanelSpec("Matched prefix depth (tokens)",
              (rate_by("llmserve_routing_decisions_total", "prefix_depth"),), "ops"),
    PREFIX_HIT_RATE,
    PanelSpec("Requests per replica",
              (rate_by("vllm:request_success_total", "replica"),), "reqps",
              "Finished requests per second on each replica: how routing spreads load."),
    RUNNING,
    RowSpec("KV-cache events"),
    PanelSpec("KV events: replicas routed from events",
              (Query(f"sum by (model_name) (llmserve_kv_events_live_replicas{{{M}}})",
                     "{{model_name}} live"),
               Query(f"sum by (model_name) (llmserve_replica_ready{{{M}}}) and on (model_name) "
                     f"llmserve_kv_events_live_replicas{{{M}}}", "{{model_name}} ready")),
              "short", "Replicas whose KV events the router follows, against the ready "
              "replicas of models with events; the gap fell back to approximate routing."),
    PanelSpec("KV events: event batches",
              (Query(f'sum by (model_name) (rate(llmserve_kv_events_total{{{M}, '
                     f'event="batches"}}{RATE}))', "{{model_name}}"),), "ops",
              "Event batches received from the engines."),
    PanelSpec("KV events: subscription events",
              (Query(f'sum by (event) (increase(llmserve_kv_events_total{{{M}, '
                     f'event!="batches"}}{RATE}))', "{{event}}"),), "short",
              "connected, restarted (the engine restarted), gap_replayed (a sequence gap "
              "filled from the replay socket), gap_lost (a gap it could not fill)."),
    PanelSpec("KV events: degraded replicas by reason",
              (Query(f"sum by (reason) (increase(llmserve_kv_events_degraded_total{{{M}}}"
                     f"{RATE}))", "{{reason}}"),), "short",
              "Times a replica's events became unusable and it fell back to approximate "
              "prefix routing."),
)

S = 'application=~".+"'


def controller_gauge(gauge: str, by: str, legend: str) -> Query:
    """A controller's gauge, counted once however many gateways export it (Ray)."""
    return Query(f"sum by ({by}) (max by (controller, application, {by}) "
                 f"({gauge}{{{S}}}))", legend)


SERVE = (
    PanelSpec("Requests per deployment",
              (rate_by("llmserve_serve_deployment_requests_total", "application, deployment",
                       S),), "reqps"),
    PanelSpec("Errors per deployment",
              (rate_by("llmserve_serve_deployment_errors_total", "application, deployment",
                       S),), "reqps"),
    PanelSpec("Processing latency",
              quantiles("llmserve_serve_deployment_processing_latency_seconds",
                        "deployment", S), "s"),
    PanelSpec("Queued requests",
              (controller_gauge("llmserve_serve_deployment_queued_requests", "deployment",
                                "{{deployment}}"),), "short"),
    PanelSpec("Ongoing requests",
              (controller_gauge("llmserve_serve_deployment_ongoing_requests", "deployment",
                                "{{deployment}}"),), "short"),
    PanelSpec("Replicas by state",
              (controller_gauge("llmserve_serve_deployment_replicas", "deployment, state",
                                "{{deployment}} {{state}}"),), "short"),
    PanelSpec("Autoscaling: desired vs running replicas",
              (controller_gauge("llmserve_serve_autoscaling_desired_replicas", "deployment",
                                "{{deployment}} desired"),
               controller_gauge("llmserve_serve_autoscaling_running_replicas", "deployment",
                                "{{deployment}} running")), "short"),
)

DASHBOARDS: dict[str, tuple[str, tuple[PanelSpec | RowSpec, ...]]] = {
    "overview": ("llmserve / Overview", OVERVIEW),
    "gateway": ("llmserve / LLM gateway", GATEWAY),
    "engines": ("llmserve / Engines", ENGINES),
    "routing": ("llmserve / Routing and caching", ROUTING),
    "serve": ("llmserve / Serving core", SERVE),
}
