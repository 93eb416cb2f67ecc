"""``python -m benchmarks.routing.gateway --worker-urls URL... --routing-config JSON``.

The llmserve gateway in front of running engines, with a full ``routing_config``
(policy name plus its options), serving until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence

from llmserve import serve
from llmserve.llm import build_openai_app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routing.gateway")
    parser.add_argument("--worker-urls", nargs="+", required=True)
    parser.add_argument("--routing-config", default='{"policy": "prefix_aware"}')
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    app = build_openai_app({"worker_urls": args.worker_urls,
                            "routing_config": json.loads(args.routing_config)})
    serve.run(app, host="127.0.0.1", port=args.port, blocking=True)


if __name__ == "__main__":
    main()
