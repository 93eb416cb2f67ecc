"""The `llmserve` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llmserve.engine_flags import split_engine_flags
from llmserve.log_setup import LOG_FORMATS, configure_logging
from llmserve.serve.exceptions import ConfigError, DeployFailedError
from llmserve.tracing_setup import configure_tracing_from_env


def _run(args: argparse.Namespace) -> int:
    from llmserve import serve
    from llmserve.config_file import apply_logging_config, build_application

    config = _run_target(args)
    apply_logging_config(config)
    if args.address:
        if args.runtime != "ray":
            raise ConfigError("--address needs --runtime ray")
        os.environ["RAY_ADDRESS"] = args.address  # read by ray.init in the Ray runtime
    host = args.host or config.http_options.host
    port = args.port if args.port is not None else config.http_options.port
    for app_config in config.applications:
        app = build_application(app_config)
        serve.run(app, name=app_config.name, route_prefix=app_config.route_prefix, host=host,
                  port=port, runtime=args.runtime,
                  proxy_location=args.proxy_location or config.proxy_location)
        print(f"application {app_config.name!r} is ready at "
              f"{serve.http_url()}{app_config.route_prefix or ''}", flush=True)
    print("serving; press Ctrl-C to stop", flush=True)
    serve.run_until_signal()
    return 0


def _run_target(args: argparse.Namespace) -> Any:
    """A config file, or (as `serve run module:app key=value ...`) an import path whose
    builder gets the ``key=value`` pairs as its args."""
    from llmserve.config_file import ApplicationConfig, ServeConfigFile, load_config_file

    target: str = args.config
    if target.endswith((".yaml", ".yml", ".json")) or Path(target).is_file():
        if args.app_args:
            raise ConfigError(f"key=value arguments go in the config file {target}, not "
                              f"on the command line: {args.app_args}")
        return load_config_file(target)
    app = ApplicationConfig(name=args.name, route_prefix=args.route_prefix,
                            import_path=target, args=_key_values(args.app_args, "run"))
    return ServeConfigFile(applications=[app])


def _key_values(pairs: Sequence[str], what: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values parse as JSON when they can (numbers, booleans)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} expects KEY=VALUE, got {pair!r}")
        try:
            values[key] = json.loads(value)
        except ValueError:
            values[key] = value
    return values


def _shutdown(args: argparse.Namespace) -> int:
    """Ray Serve's `serve shutdown`: remove every application from the Ray cluster."""
    try:
        import ray
    except ImportError:
        raise ConfigError("llmserve shutdown acts on a Ray cluster: pip install "
                          "'llmserve[ray]'. A local-runtime server stops with Ctrl-C or "
                          "SIGTERM to its process") from None
    from llmserve import serve

    ray.init(address=args.address or os.environ.get("RAY_ADDRESS") or "auto",
             logging_level=logging.WARNING)
    serve.shutdown()
    print("llmserve: every application on the Ray cluster was shut down", flush=True)
    return 0


def _engine_kwargs(pairs: Sequence[str]) -> dict[str, Any]:
    return {key.replace("-", "_"): value
            for key, value in _key_values(pairs, "--engine-arg").items()}


def _serve(args: argparse.Namespace) -> int:
    from llmserve import serve
    from llmserve.llm import LLMConfig, build_openai_app

    _check_model_args(args)
    routing = _routing_config(args)
    app_args: dict[str, Any] = {}
    if args.worker_kv_events and not args.worker_urls:
        raise ConfigError("--worker-kv-events goes with --worker-urls (one endpoint per URL)")
    if args.worker_urls:
        _check_worker_url_args(args)
        app_args["worker_urls"] = args.worker_urls
        if args.model_id:  # the name clients use, mapped onto the workers' served name
            app_args["worker_model_id"] = args.model_id
        lora = _lora_config(args)  # adapters the gateway loads into the workers on demand
        if lora is not None:
            app_args["worker_lora_config"] = lora
        if args.worker_kv_events:
            app_args["worker_kv_events"] = args.worker_kv_events
        app_args["worker_engine"] = "vllm" if args.engine == "sim" else args.engine
        if args.worker_startup_timeout_secs is not None:
            app_args["worker_startup_timeout_s"] = args.worker_startup_timeout_secs
        if args.worker_api_key:
            print("llmserve: warning: --worker-api-key is visible to every local user in "
                  "`ps`; prefer the LLMSERVE_WORKER_API_KEY environment variable",
                  file=sys.stderr, flush=True)
            app_args["worker_api_key"] = args.worker_api_key
        if args.model:  # the engines' files: route on their tokenizer's token ids
            routing = {"tokenizer_source": args.model, **(routing or {})}
        if routing:
            app_args["routing_config"] = routing
    else:
        if not args.model:
            raise ConfigError("llmserve serve needs a MODEL (a model directory: "
                              "`llmserve serve DIR`), or --worker-urls URL ...")
        if args.worker_startup_timeout_secs is not None:
            raise ConfigError("--worker-startup-timeout-secs needs --worker-urls")
        if args.worker_api_key:
            raise ConfigError("--worker-api-key needs --worker-urls (engines llmserve "
                              "launches get a key of their own)")
        engine_kwargs = _merged_engine_kwargs(args)
        if args.engine == "vllm":
            from engines.vllm.engine import default_cli_kwargs

            engine_kwargs = {**default_cli_kwargs(), **engine_kwargs}
        config: dict[str, Any] = {
            "model_loading_config": {"model_id": args.model_id or Path(args.model).name,
                                     "model_source": args.model},
            "llm_engine": args.engine,
            "engine_kwargs": engine_kwargs,
            "deployment_config": {"num_replicas": args.replicas or 1},
        }
        if routing:
            config["routing_config"] = routing
        lora = _lora_config(args)
        if lora is not None:
            config["lora_config"] = lora
        app_args["llm_configs"] = [LLMConfig.model_validate(config)]
    if args.api_key:
        print("llmserve: warning: --api-key is visible to every local user in `ps`; prefer "
              "--api-key-file or the LLMSERVE_API_KEYS environment variable",
              file=sys.stderr, flush=True)
        app_args["api_keys"] = args.api_key
    if args.api_key_file:
        app_args["api_keys_file"] = args.api_key_file
    print(f"llmserve: starting ({args.engine} engine) ...", flush=True)
    disaggregated = args.prefill_replicas is not None or args.decode_replicas is not None
    app = pd_app(args, app_args) if disaggregated else build_openai_app(app_args)
    serve.run(app, host=args.host, port=args.port)
    url = serve.http_url()
    print(f"llmserve: ready at {url}/v1", flush=True)
    print(_snippet(url or "", args), flush=True)
    serve.run_until_signal()
    return 0


def _check_model_args(args: argparse.Namespace) -> None:
    """MODEL (positional, as `vllm serve MODEL`) and --model name the same thing."""
    if args.model_path and args.model and args.model_path != args.model:
        raise ConfigError(f"MODEL {args.model_path!r} and --model {args.model!r} differ; "
                          "give one of them")
    args.model = args.model or args.model_path


def _check_worker_url_args(args: argparse.Namespace) -> None:
    """Options that only apply to engines llmserve launches are refused with --worker-urls
    (the workers were started with their own flags)."""
    given = [flag for flag, value in (("--replicas", args.replicas),
                                      ("--engine-arg", args.engine_arg),
                                      ("engine flags", args.engine_flags)) if value]
    if given:
        extra = f" ({', '.join('--' + k.replace('_', '-') for k in args.engine_flags)})" \
            if args.engine_flags else ""
        raise ConfigError(f"{', '.join(given)}{extra} configure engines llmserve launches; "
                          "with --worker-urls set them on the workers themselves")


def _merged_engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Engine flags given as themselves plus ``--engine-arg KEY=VALUE`` pairs."""
    flags: dict[str, Any] = dict(args.engine_flags)
    pairs = _engine_kwargs(args.engine_arg)
    both = sorted(set(flags) & set(pairs))
    if both:
        raise ConfigError(f"engine flag(s) {both} given both as --flag and as --engine-arg")
    return {**flags, **pairs}


def _lora_config(args: argparse.Namespace) -> dict[str, Any] | None:
    """``lora_config`` from --lora-dir, --lora-modules and --max-loras-per-replica."""
    if not (args.lora_dir or args.lora_modules):
        if args.max_loras_per_replica is not None:
            raise ConfigError("--max-loras-per-replica needs --lora-dir or --lora-modules")
        return None
    modules: dict[str, str] = {}
    for pair in args.lora_modules:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--lora-modules expects NAME=PATH, got {pair!r}")
        modules[name] = path
    lora: dict[str, Any] = {"dynamic_lora_loading_path": args.lora_dir, "lora_modules": modules}
    if args.max_loras_per_replica is not None:
        lora["max_num_adapters_per_replica"] = args.max_loras_per_replica
    return lora


def pd_app(args: argparse.Namespace, app_args: dict[str, Any]) -> Any:
    """``--prefill-replicas``/``--decode-replicas``: the model's prefill and decode pools
    (docs/pd.md); ``--routing`` applies to the prefill pool, decode goes by load."""
    from llmserve.llm import build_pd_openai_app

    if args.worker_urls:
        raise ConfigError("--prefill-replicas/--decode-replicas launch engines; they do not "
                          "combine with --worker-urls")
    (config,) = app_args.pop("llm_configs")
    pools = {}
    for role, replicas in (("prefill", args.prefill_replicas), ("decode", args.decode_replicas)):
        if replicas is not None and replicas < 1:
            raise ConfigError(f"--{role}-replicas must be >= 1, got {replicas}")
        pool = config.model_dump(exclude={"routing_config"} if role == "decode" else set())
        pool["deployment_config"] = {"num_replicas": replicas or 1}
        pools[f"{role}_config"] = pool
    return build_pd_openai_app({**app_args, **pools})


def _routing_config(args: argparse.Namespace) -> dict[str, Any] | None:
    routing: dict[str, Any] = {}
    if args.routing_config:
        try:
            routing = json.loads(args.routing_config)
        except ValueError as exc:
            raise ConfigError(f"--routing-config is not valid JSON: {exc}") from None
        if not isinstance(routing, dict):
            raise ConfigError("--routing-config must be a JSON object, e.g. "
                              '\'{"policy": "prefix_aware", "block_size": 16}\'')
    if args.routing:
        routing["policy"] = args.routing
    return routing or None


def _snippet(url: str, args: argparse.Namespace) -> str:
    key = "YOUR_API_KEY" if args.api_key or args.api_key_file or \
        os.environ.get("LLMSERVE_API_KEYS") else "none"
    model = args.model_id or (Path(args.model).name if args.model else "MODEL")
    return (
        "\n# OpenAI SDK:\n"
        "from openai import OpenAI\n"
        f"client = OpenAI(base_url=\"{url}/v1\", api_key=\"{key}\")\n"
        f"print(client.chat.completions.create(model=\"{model}\", messages=[{{\"role\": "
        "\"user\", \"content\": \"Hello!\"}], max_tokens=32).choices[0].message.content)\n"
        "\n# curl:\n"
        f"curl {url}/v1/chat/completions -H 'content-type: application/json' "
        f"-H 'authorization: Bearer {key}' "
        f"-d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", "
        "\"content\": \"Hello!\"}], \"max_tokens\": 32}'\n"
    )


def _status(args: argparse.Namespace) -> int:
    from llmserve.status_view import fetch_status, format_status

    try:
        data = fetch_status(args.address)
    except OSError as exc:
        print(f"llmserve: no status from {args.address}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else format_status(data), flush=True)
    return 0


def _make_tiny_model(args: argparse.Namespace) -> int:
    from llmserve.llm.tiny_model import make_tiny_model_cli

    argv = [args.dir, "--seed", str(args.seed), "--lora", str(args.lora)]
    return make_tiny_model_cli(argv)


SERVE_DESCRIPTION = """\
Serve one model behind the OpenAI API: launch its engine replicas (vLLM, SGLang or the
simulator) or front engine servers that already run (--worker-urls).

Every --flag this command does not know goes to the engine unchanged, as with
`vllm serve MODEL [flags]`: put engine flags after MODEL. A flag takes the words after it
up to the next --flag (none: a bare switch); --flag=value takes exactly one."""

SERVE_EXAMPLES = """\
examples:
  llmserve make-tiny-model /tmp/tiny
  llmserve serve /tmp/tiny --served-model-name tiny --max-model-len 1024
  llmserve serve /tmp/tiny --engine sim --replicas 2 --routing least_loaded
  llmserve serve --worker-urls http://10.0.0.5:8001 https://10.0.0.6 --model-id tiny
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmserve", description="llmserve command line")
    parser.add_argument("--version", action="version", version=f"llmserve {_version()}")
    _add_global_options(parser, "INFO")
    # the same options after the subcommand (`llmserve serve ... --log-level debug`)
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)

    def add_command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, parents=[common])

    run = add_command("run", "serve a Ray-Serve-style config file, or an application by "
                             "import path (module:app or module:builder key=value ...)")
    run.add_argument("config", metavar="CONFIG_OR_IMPORT_PATH",
                     help="YAML file with an 'applications' list, or module:attribute naming "
                          "an application or a builder")
    run.add_argument("app_args", nargs="*", metavar="KEY=VALUE",
                     help="with an import path: arguments for the builder (values parse as "
                          "JSON when they can)")
    run.add_argument("--name", default="default", help="application name (import path form)")
    run.add_argument("--route-prefix", default="/",
                     help="application route prefix (import path form)")
    run.add_argument("--runtime", default="local", choices=["local", "ray"],
                     help="ray: replicas are Ray actors; the controller is a detached Ray "
                          "actor that survives this process and its own restarts "
                          "(docs/ray.md)")
    run.add_argument("--proxy-location", default=None,
                     choices=["EveryNode", "HeadOnly", "Disabled"],
                     help="with --runtime ray: where HTTP proxies run besides this "
                          "process's own (default: the config's proxy_location, EveryNode)")
    run.add_argument("--address", default=None,
                     help="Ray cluster to join with --runtime ray (default: RAY_ADDRESS, "
                          "else a local Ray is started)")
    run.add_argument("--host", default=None,
                     help="address to listen on (default: the config's http_options, "
                          "else 127.0.0.1)")
    run.add_argument("--port", type=int, default=None,
                     help="port to listen on (default: the config's http_options, else 8000)")
    run.set_defaults(handler=_run)

    srv = add_command("serve", "serve one model behind the OpenAI API (engine flags "
                               "after MODEL go to the engine, as with `vllm serve`)")
    srv.description = SERVE_DESCRIPTION
    srv.epilog = SERVE_EXAMPLES
    srv.formatter_class = argparse.RawDescriptionHelpFormatter
    srv.add_argument("model_path", nargs="?", metavar="MODEL",
                     help="model directory (for --engine sim: its tokenizer); same as "
                          "--model")
    srv.add_argument("--model", help="model directory, as MODEL; with --worker-urls: the "
                     "engines' model files, whose tokenizer prefix-aware routing uses")
    srv.add_argument("--model-id", "--served-model-name", dest="model_id",
                     help="the model name clients send (default: MODEL's directory name); "
                          "with --worker-urls: mapped onto the name the workers serve")
    srv.add_argument("--engine", default="vllm", choices=["vllm", "sim", "sglang"],
                     help="engine to launch, or with --worker-urls the workers' kind "
                          "(default: vllm; sim: the built-in simulator, no model needed)")
    srv.add_argument("--replicas", type=int, default=None,
                     help="engine replicas to launch (default 1)")
    srv.add_argument("--prefill-replicas", type=int, default=None, metavar="N",
                     help="serve with prefill/decode disaggregation: N prefill engines "
                          "(docs/pd.md)")
    srv.add_argument("--decode-replicas", type=int, default=None, metavar="M",
                     help="with prefill/decode disaggregation: M decode engines")
    srv.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    srv.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    srv.add_argument("--api-key", action="append", default=[],
                     help="accepted API key (repeatable; visible in `ps`: prefer "
                          "--api-key-file or LLMSERVE_API_KEYS); none = no auth")
    srv.add_argument("--api-key-file", metavar="PATH",
                     help="file with the accepted API keys, one a line")
    srv.add_argument("--routing", help="routing policy: prefix_aware (default), "
                     "least_loaded, power_of_two, round_robin, session_affinity, scored")
    srv.add_argument("--routing-config", metavar="JSON",
                     help='full routing_config, e.g. \'{"policy": "prefix_aware", '
                          '"balance_abs_threshold": 64}\' (--routing overrides its policy)')
    srv.add_argument("--worker-urls", nargs="+", default=[], metavar="URL",
                     help="front engine servers (http:// or https://) instead of launching "
                          "any; those not up yet are taken in when they answer")
    srv.add_argument("--worker-startup-timeout-secs", type=float, default=None,
                     help="with --worker-urls: how long to wait for a worker to come up "
                          "before reporting it failed on /health (default 600)")
    srv.add_argument("--worker-api-key", metavar="KEY",
                     help="with --worker-urls: the key the workers demand (their "
                          "--api-key / VLLM_API_KEY), sent as 'Authorization: Bearer KEY'; "
                          "visible in `ps`: prefer the LLMSERVE_WORKER_API_KEY environment "
                          "variable")
    srv.add_argument("--worker-kv-events", nargs="+", default=[], metavar="ENDPOINT",
                     help="where each --worker-urls engine publishes KV-cache events, same "
                          "order: tcp://HOST:PORT[,tcp://HOST:REPLAY_PORT], '' for none")
    srv.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                     help="engine flag as KEY=VALUE (repeatable), e.g. max_model_len=1024; "
                          "the same as --max-model-len 1024 after MODEL")
    srv.add_argument("--lora-dir", metavar="PATH_OR_URI",
                     help="folder of LoRA adapters (local, file:// or s3://), loaded on demand; "
                          "request one as MODEL_ID:ADAPTER")
    srv.add_argument("--lora-modules", nargs="+", default=[], metavar="NAME=PATH",
                     help="LoRA adapters served under their own NAME (vLLM's convention)")
    srv.add_argument("--max-loras-per-replica", type=int, default=None, metavar="N",
                     help="adapters resident per replica (default 16); least recently used "
                          "are unloaded")
    srv.set_defaults(handler=_serve)

    stop = add_command("shutdown", "remove every application from a Ray cluster (as "
                                   "`serve shutdown`)")
    stop.add_argument("--address", default=None,
                      help="the Ray cluster (default: RAY_ADDRESS, else the local one)")
    stop.set_defaults(handler=_shutdown)

    status = add_command(
        "status", "applications, deployments and replicas (node, resources, state)")
    status.add_argument("--address", default="http://127.0.0.1:8000",
                        help="the HTTP proxy of the running serve instance")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.set_defaults(handler=_status)

    tiny = add_command("make-tiny-model", "build a small random Llama locally")
    tiny.add_argument("dir", help="directory to write the model to (e.g. /tmp/tiny)")
    tiny.add_argument("--lora", type=int, default=0, help="number of LoRA adapters")
    tiny.add_argument("--seed", type=int, default=0,
                      help="random seed of the weights (the same seed, the same model)")
    tiny.set_defaults(handler=_make_tiny_model)

    commands.add_parser("bench", help="load generator (see `llmserve bench --help`)")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llmserve")
    except PackageNotFoundError:
        return "unknown"


def _add_global_options(parser: argparse.ArgumentParser, log_level_default: str) -> None:
    parser.add_argument("--log-level", default=log_level_default,
                        help="debug, info, warning or error (default: info)")
    parser.add_argument("--log-format", choices=LOG_FORMATS,
                        default="text" if log_level_default != argparse.SUPPRESS
                        else argparse.SUPPRESS,
                        help="text lines or one JSON object per line (default: text); "
                             "the access log has one line per request either way")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The parsed command line; for `serve`, the --flags it does not know become
    ``engine_flags`` (engine kwargs) instead of errors."""
    parser = build_parser()
    at = _command_index(argv)
    engine_flags: dict[str, Any] = {}
    if at is not None and argv[at] == "serve":
        known = _subparser(parser, "serve")._option_string_actions
        split = split_engine_flags(argv[at + 1:], known)
        argv = [*argv[:at + 1], *split.own]
        engine_flags = split.engine_kwargs
    args = parser.parse_args(argv)
    args.engine_flags = engine_flags
    return args


def _command_index(argv: Sequence[str]) -> int | None:
    """Where the subcommand is (global options may come before it)."""
    skip = False
    for i, token in enumerate(argv):
        if skip:
            skip = False
        elif token in ("--log-level", "--log-format"):
            skip = True
        elif not token.startswith("-"):
            return i
    return None


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise KeyError(name)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # its own parser, flags as `vllm bench serve`
        from llmserve.bench.cli import bench_main

        return bench_main(argv[1:])
    args = parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    configure_tracing_from_env()
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (ConfigError, ValidationError) as exc:
        print(f"llmserve: configuration error: {exc}", file=sys.stderr)
        return 2
    except DeployFailedError as exc:  # the replica's log above holds the details
        print(f"llmserve: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
