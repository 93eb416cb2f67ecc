"""The gateway's start-up time and memory: the light tokenizer against transformers'.

``llmserve serve --worker-urls`` in front of two simulated engines, routing with
``prefix_aware`` on the tiny model's files, started alternately (``--rounds`` times each)
with the gateway's own tokenizer (``tokenizer.json`` + Jinja) and with
``transformers.AutoTokenizer`` put in its place (the gateway as it was). Each start is
timed from spawn until ``/v1/models`` answers (the tokenizer is loaded before that);
after a few routed chat requests the script reads the gateway's RSS, then stops it and
counts the ``nanobind: leaked`` lines it printed on exit. Prints medians and the ratios
light / transformers.

Run: ``.venv/bin/python -m benchmarks.gateway_tokenizer [--rounds 3] [--port-base 28000]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.cluster_procs import ROOT, sim_cluster, stop, wait_http_ok
from llmserve.llm.tiny_model import cached_tiny_model

# The gateway with transformers' tokenizer, as before the light one: same CLI otherwise.
WITH_TRANSFORMERS = (
    "import sys\n"
    "import llmserve.openai.prompt as prompt\n"
    "def load_tokenizer(source):\n"
    "    from transformers import AutoTokenizer\n"
    "    return AutoTokenizer.from_pretrained(source)\n"
    "prompt.load_tokenizer = load_tokenizer\n"
    "from llmserve.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n")
WITH_LIGHT = "import sys\nfrom llmserve.cli import main\nsys.exit(main(sys.argv[1:]))\n"
VARIANTS = {"light": WITH_LIGHT, "transformers": WITH_TRANSFORMERS}


def rss_mib(pid: int) -> float:
    """Resident memory of the process and its children."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def chat(url: str, n: int) -> None:
    body = {"model": "tiny", "max_tokens": 4, "messages": [
        {"role": "system", "content": "You are a terse assistant. " * 30},
        {"role": "user", "content": f"Question number {n}?"}]}
    request = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def one_start(variant: str, model_dir: Path, workers: list[str], port: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-c", VARIANTS[variant], "--log-level", "WARNING", "serve",
             "--port", str(port), "--routing", "prefix_aware", "--model", str(model_dir),
             "--worker-urls", *workers],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            wait_http_ok(url + "/v1/models", 120, proc, poll_s=0.05)
            ready_s = time.monotonic() - started
            for n in range(8):
                chat(url, n)
            rss = rss_mib(proc.pid)
        finally:
            stop(proc, 30)
        log.seek(0)
        leaked = sum(1 for line in log.read().decode(errors="replace").splitlines()
                     if "nanobind: leaked" in line)
    return {"ready_s": ready_s, "rss_mib": rss, "exit_leak_lines": leaked}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port-base", type=int, default=28000)
    args = parser.parse_args()
    model_dir = cached_tiny_model()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as logs, sim_cluster(
            str(model_dir), 2, args.port_base + 10, "llama-3.1-8b-h100", 1.0,
            Path(logs) / "sim.log") as workers:
        for round_ in range(args.rounds):
            for variant in VARIANTS:
                result = one_start(variant, model_dir, workers, args.port_base)
                runs[variant].append(result)
                print(f"round {round_ + 1} {variant:>12}: ready {result['ready_s']:.2f} s, "
                      f"RSS {result['rss_mib']:.0f} MiB, "
                      f"'nanobind: leaked' lines at exit {result['exit_leak_lines']}",
                      flush=True)
    medians = {name: {key: statistics.median(r[key] for r in results) for key in results[0]}
               for name, results in runs.items()}
    light, heavy = medians["light"], medians["transformers"]
    print(f"\nmedian of {args.rounds} starts each (gateway + 2 simulated engines, "
          "prefix_aware, tiny model)")
    print(f"{'':>14} {'ready s':>8} {'RSS MiB':>8} {'leak lines':>11}")
    for name, m in medians.items():
        print(f"{name:>14} {m['ready_s']:>8.2f} {m['rss_mib']:>8.0f} "
              f"{m['exit_leak_lines']:>11.0f}")
    print(f"{'light/transf.':>14} {light['ready_s'] / heavy['ready_s']:>8.2f} "
          f"{light['rss_mib'] / heavy['rss_mib']:>8.2f}")


if __name__ == "__main__":
    main()
