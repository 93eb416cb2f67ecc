"""``python -m benchmarks.gateway --worker-urls URL... --policy NAME --port P``.

The llmserve OpenAI gateway in front of engines that already run (``worker_urls``
mode of :func:`llmserve.llm.build_openai_app`), serving until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from llmserve import serve
from llmserve.llm import build_openai_app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gateway")
    parser.add_argument("--worker-urls", nargs="+", required=True)
    parser.add_argument("--policy", default="power_of_two")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--engine", default="vllm", help="how to read the workers' /metrics")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    app = build_openai_app({"worker_urls": args.worker_urls, "worker_engine": args.engine,
                            "routing_config": {"policy": args.policy}})
    serve.run(app, host=args.host, port=args.port, blocking=True)


if __name__ == "__main__":
    main()
