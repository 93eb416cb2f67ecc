"""Gateway overhead on the Ray runtime next to the local runtime (real vLLM CPU engine).

The load of ``benchmarks.gateway_overhead`` (300 requests, 32 concurrent, 256 input /
128 output tokens, ``ignore_eos``, the tiny model) through llmserve's OpenAI app served by
``serve.run(build_openai_app(...), runtime=...)``: one ``LLMServer`` replica with one vLLM
CPU engine, and the ingress, on ``runtime="local"`` and then on ``runtime="ray"`` (a
local Ray the server process starts) twice: ``ray-actor``, the ingress in a Ray actor of
its own (the proxy reaches it by a Ray streaming call whose items carry the ASGI
messages), and ``ray``, the default, the ingress in the proxy's process
(``ray_actor_options.in_proxy``). Each server runs in its own process; this process
only generates load. Against each, rounds alternate between the gateway and the same
engine's own OpenAI server (bare vLLM), so the ratio compares like with like on a noisy
machine. Prints output tok/s, TTFT and ITL p50/p99, TPOT p50 (medians over the rounds)
and ratios (TPOT, not ITL: under load vLLM sends several tokens in one chunk, so the ITL
median can be 0), and the gateway's CPU milliseconds per 1000 output tokens: CPU time of
the server process and its descendants (Ray's GCS, raylet and workers included; the
engine's processes not), which shifts far less than wall-clock figures when other jobs
share the machine. Writes JSON under benchmarks/results/.

Run: ``.venv/bin/python -m benchmarks.ray_gateway_overhead [--rounds 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.cluster_procs import stop, wait_http_ok
from benchmarks.gateway_overhead import (
    ENGINE_KWARGS,
    load_once,
    median_of,
    stop_ray,
)
from engines.process import free_port
from llmserve.llm.tiny_model import cached_tiny_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODES = ("local", "ray-actor", "ray")
ENGINE_KEY = "sk-bench-engine"  # the engine's secret, so the bare rounds can reach it
FIELDS = ("output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_itl_ms", "p99_itl_ms",
          "median_tpot_ms", "cpu_ms_per_1k_tokens")


def serve_app(mode: str, port: int, url_file: Path) -> None:
    """The server process: the OpenAI app in ``mode``; writes the engine's URL."""
    from llmserve import serve
    from llmserve.llm import LLMConfig, build_openai_app
    from llmserve.serve.api import run_until_signal

    cfg = LLMConfig.model_validate({
        "model_loading_config": {"model_id": "tiny",
                                 "model_source": str(cached_tiny_model())},
        "engine_kwargs": ENGINE_KWARGS,
        "runtime_env": {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1",
                                     "VLLM_API_KEY": ENGINE_KEY}},
        "deployment_config": {"ray_actor_options": {"num_cpus": 1}}})
    ingress_options = {"num_cpus": 0, "in_proxy": mode != "ray-actor"}
    app = build_openai_app({"llm_configs": [cfg], "ingress_deployment_config": {
        "ray_actor_options": ingress_options}})
    if mode == "local":
        serve.run(app, port=port, runtime="local")
    else:  # the driver's proxy alone (no node proxy sharing its port), as measured before
        serve.run(app, port=port, runtime="ray", proxy_location="Disabled")
    info = serve.get_deployment_handle("LLMServer:tiny").endpoint.remote().result(
        timeout_s=60)
    url_file.write_text(info.url)
    run_until_signal()


def gateway_cpu_s(server_pid: int) -> float:
    """CPU seconds used so far by the server process and its descendants (Ray's GCS,
    raylet and actor workers included), the engine's processes left out."""
    import psutil

    total = 0.0
    root = psutil.Process(server_pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            if "vllm" in " ".join(proc.cmdline()).lower() or proc.name().startswith("VLLM"):
                continue
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue  # gone since the listing
    return total


def gateway_round(url: str, pid: int, model_dir: Path,
                  args: argparse.Namespace) -> dict[str, Any]:
    """One load round through the gateway, with the gateway's CPU ms per 1000 tokens."""
    before = gateway_cpu_s(pid)
    summary = load_once(url, model_dir, args)
    tokens = summary["completed"] * args.output_len
    summary["cpu_ms_per_1k_tokens"] = (gateway_cpu_s(pid) - before) * 1e6 / max(tokens, 1)
    return summary


def measure(mode: str, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Alternate rounds: gateway in ``mode``, then its engine directly."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        url_file = Path(tmp) / "engine_url"
        log_path = RESULTS / f"ray_gateway_overhead_{mode}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.ray_gateway_overhead", "--server", mode,
                 "--port", str(port), "--url-file", str(url_file)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        started = time.monotonic()
        try:
            gateway = f"http://127.0.0.1:{port}"
            wait_http_ok(gateway + "/health", 300, proc, poll_timeout_s=10)
            while not url_file.exists():
                time.sleep(0.2)
            engine = url_file.read_text().strip()
            print(f"{mode}: serving after {time.monotonic() - started:.0f} s; "
                  f"engine at {engine}", flush=True)
            load_once(gateway, model_dir, args)  # warm-up round
            runs: dict[str, list[dict[str, Any]]] = {"gateway": [], "bare": []}
            for _ in range(args.rounds):
                runs["gateway"].append(gateway_round(gateway, proc.pid, model_dir, args))
                runs["bare"].append(load_once(engine, model_dir, args, api_key=ENGINE_KEY))
            return {name: median_of(r, FIELDS) for name, r in runs.items()}
        finally:
            stop(proc, 90)
            if mode != "local":
                stop_ray()


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    out = RESULTS / "ray_gateway_overhead.json"
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2,
                              default=str))
    print(f"wrote {out}")
    print(f"workload: {args.num_requests} requests, {args.concurrency} concurrent, "
          f"{args.input_len} in / {args.output_len} out tokens, ignore_eos; "
          f"medians of {args.rounds} rounds alternating gateway / bare engine")
    print(f"{'system':<20} {'out tok/s':>10} {'TTFT p50':>9} {'TTFT p99':>9} "
          f"{'ITL p50':>8} {'ITL p99':>8} {'TPOT p50':>9} {'tok/s x':>8} {'TPOT x':>7} "
          f"{'gateway CPU ms/1k tok':>22}")
    for mode, pair in results.items():
        bare = pair["bare"]
        for name in ("bare", "gateway"):
            r = pair[name]
            if not r["output_throughput"]:
                print(f"{mode}: {name}: nothing completed ({r['completed']} requests)")
                continue
            label = f"{mode}: " + ("bare vLLM" if name == "bare" else "llmserve")
            print(f"{label:<20} {r['output_throughput']:>10.0f} {r['median_ttft_ms']:>8.0f}ms "
                  f"{r['p99_ttft_ms']:>7.0f}ms {r['median_itl_ms']:>6.1f}ms "
                  f"{r['p99_itl_ms']:>6.1f}ms {r['median_tpot_ms']:>7.1f}ms "
                  f"{r['output_throughput'] / bare['output_throughput']:>8.2f} "
                  f"{r['median_tpot_ms'] / max(bare['median_tpot_ms'], 1e-9):>7.2f} "
                  f"{r.get('cpu_ms_per_1k_tokens', float('nan')):>22.0f}")
    local = results.get("local", {}).get("gateway")
    for mode in ("ray-actor", "ray"):
        if local is not None and mode in results:
            r = results[mode]["gateway"]
            print(f"{mode} / local gateway: out tok/s "
                  f"x{r['output_throughput'] / local['output_throughput']:.2f}, TTFT p50 "
                  f"x{r['median_ttft_ms'] / local['median_ttft_ms']:.2f}, TPOT p50 "
                  f"x{r['median_tpot_ms'] / max(local['median_tpot_ms'], 1e-9):.2f}, gateway "
                  f"CPU per token x{r['cpu_ms_per_1k_tokens'] / local['cpu_ms_per_1k_tokens']:.2f}")


def main() -> None:
    # Keep Ray's nodes (and the engine) on loopback: this benchmark runs on one machine.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--server", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.server:
        serve_app(args.server, args.port, args.url_file)
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    model_dir = cached_tiny_model()
    results = {mode: measure(mode, model_dir, args) for mode in args.modes.split(",")}
    report(results, args)


if __name__ == "__main__":
    main()
