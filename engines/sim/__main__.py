"""``python -m engines.sim --model DIR --port P --replicas N``: N simulated vLLM replicas."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Sequence

from engines.sim.auth import API_KEY_ENV
from engines.sim.cluster import ClusterConfig, SimCluster
from engines.sim.event_publisher import KVEventsConfig, KVEventsConfigError
from engines.sim.kv_transfer import KVTransferConfig, KVTransferConfigError
from engines.sim.profiles import DEFAULT_PROFILE, PROFILES


def parse_args(argv: Sequence[str] | None = None) -> ClusterConfig:
    parser = argparse.ArgumentParser(
        prog="python -m engines.sim", description="Simulated vLLM engine replicas."
    )
    parser.add_argument("--model", default=None, help="tokenizer directory (tokenizer.json)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="first port; 0 = any free")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES))
    parser.add_argument("--kv-blocks", type=int, default=None)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--max-num-seqs", type=int, default=None)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--max-loras", type=int, default=4)
    # vLLM's LoRA flags: the simulator always serves adapters; rank does not change its timing
    parser.add_argument("--enable-lora", action="store_true")
    parser.add_argument("--max-lora-rank", type=int, default=16)
    parser.add_argument("--lora-modules", nargs="*", default=[], metavar="NAME=PATH")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--no-enable-prefix-caching", action="store_true")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--kv-events-config", default=None,
                        help="vLLM's KVEventsConfig as JSON; replica k publishes on the "
                        "endpoint's (and replay endpoint's) port + k")
    parser.add_argument("--kv-transfer-config", default=None,
                        help="vLLM's KVTransferConfig as JSON (kv_connector NixlConnector, "
                        "kv_role); without it kv_transfer_params are ignored, as in vLLM")
    args = parser.parse_args(argv)
    if args.replicas < 1:
        parser.error("--replicas must be >= 1")
    if args.time_scale <= 0:
        parser.error("--time-scale must be > 0")
    modules = dict(item.partition("=")[::2] for item in args.lora_modules)
    if any(not name or not path for name, path in modules.items()):
        parser.error("--lora-modules takes NAME=PATH items")
    if args.kv_events_config is not None:
        try:
            KVEventsConfig.from_json(args.kv_events_config)
        except KVEventsConfigError as exc:
            parser.error(str(exc))
    try:
        KVTransferConfig.from_json(args.kv_transfer_config)
    except KVTransferConfigError as exc:
        parser.error(str(exc))
    return ClusterConfig(
        model_dir=args.model,
        num_replicas=args.replicas,
        host=args.host,
        port=args.port,
        profile=args.profile,
        kv_blocks=args.kv_blocks,
        block_size=args.block_size,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        max_loras=args.max_loras,
        lora_modules=tuple(modules.items()),
        time_scale=args.time_scale,
        served_model_name=args.served_model_name,
        enable_prefix_caching=not args.no_enable_prefix_caching,
        log_level=args.log_level,
        kv_events_config=args.kv_events_config,
        kv_transfer_config=args.kv_transfer_config,
        api_key=os.environ.get(API_KEY_ENV) or None,  # as vLLM: from the environment
    )


async def serve(config: ClusterConfig) -> None:
    cluster = SimCluster(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, cluster.request_stop)
    await cluster.start()
    engine = config.engine_config()
    for index, url in enumerate(cluster.urls):
        print(
            f"sim replica {index} ready at {url} model={config.model_name} "
            f"profile={engine.profile.name} kv_blocks={engine.num_blocks} "
            f"block_size={engine.block_size} time_scale={config.time_scale}",
            flush=True,
        )
    await cluster.wait()
    await cluster.stop()
    print("sim replicas stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    logging.basicConfig(level=config.log_level.upper())
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
