"""Serve the tiny model with Ray Serve LLM (``ray.serve.llm``) for the overhead comparison.

Run by ``benchmarks/gateway_overhead.py`` in its own process:
``python benchmarks/ray_serve_llm_app.py --model DIR --port P``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading


def main() -> None:
    # Keep Ray's nodes (and engines) on loopback: this benchmark runs on one machine.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--model-id", default="tiny")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--engine-kwargs", default="{}")
    args = parser.parse_args()

    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    # Logical CPUs: the proxy, controller, ingress and engine replica each hold one.
    ray.init(num_cpus=8, include_dashboard=False, runtime_env={"env_vars": env})
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    config = LLMConfig(
        model_loading_config={"model_id": args.model_id, "model_source": args.model},
        engine_kwargs=json.loads(args.engine_kwargs),
        deployment_config={"num_replicas": 1},
        placement_group_config={"bundles": [{"CPU": 1}]},
        runtime_env={"env_vars": env},
    )
    serve.run(build_openai_app({"llm_configs": [config]}), blocking=False)
    print("RAY_SERVE_LLM_READY", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
