"""The `llmserve` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from llmserve.serve.exceptions import ConfigError


def _run(args: argparse.Namespace) -> int:
    from llmserve import serve
    from llmserve.config_file import build_application, load_config_file

    config = load_config_file(args.config)
    host = args.host or config.http_options.host
    port = args.port if args.port is not None else config.http_options.port
    for app_config in config.applications:
        app = build_application(app_config)
        serve.run(app, name=app_config.name, route_prefix=app_config.route_prefix, host=host,
                  port=port, runtime=args.runtime)
        print(f"application {app_config.name!r} is ready at "
              f"{serve.http_url()}{app_config.route_prefix or ''}", flush=True)
    print("serving; press Ctrl-C to stop", flush=True)
    serve.run_until_signal()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmserve", description="llmserve command line")
    parser.add_argument("--log-level", default="INFO")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="serve the applications of a Ray-Serve-style YAML")
    run.add_argument("config", help="YAML file with an 'applications' list")
    run.add_argument("--runtime", default="local", choices=["local"])
    run.add_argument("--host", default=None)
    run.add_argument("--port", type=int, default=None)
    run.set_defaults(handler=_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (ConfigError, ValidationError) as exc:
        print(f"llmserve: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
