"""The startup heap is frozen out of garbage collection once per serving process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from llmserve.serve import gc_freeze

SCRIPT = """
import gc, json
from llmserve import serve

@serve.deployment
class Holder:
    def __init__(self):
        self.startup = [{"n": i} for i in range(20_000)]  # long-lived, GC-tracked

    def __call__(self, _):
        return gc.get_freeze_count()

assert gc.get_freeze_count() == 0
handle = serve.run(Holder.bind(), route_prefix=None)
frozen = gc.get_freeze_count()
seen = handle.remote(0).result()
serve.run(Holder.options(name="Later").bind(), name="later", route_prefix=None)
print(json.dumps({"frozen": frozen, "seen": seen, "after_later": gc.get_freeze_count()}))
serve.shutdown()
"""


def run_script(setting: str | None) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if k != gc_freeze.ENV}
    if setting is not None:
        env[gc_freeze.ENV] = setting
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_serve_run_freezes_the_startup_heap_once() -> None:
    got = run_script(None)  # on by default
    assert got["frozen"] > 20_000  # the replica's startup objects, at least
    assert got["seen"] > 20_000
    # a later app in the same process is not frozen: without a freeze the permanent
    # generation only shrinks (frozen objects are still freed by reference counting)
    assert got["after_later"] <= got["frozen"]


def test_setting_zero_turns_it_off() -> None:
    assert run_script("0") == {"frozen": 0, "seen": 0, "after_later": 0}


def test_freeze_runs_once_and_obeys_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc_freeze, "_frozen", False)
    monkeypatch.setenv(gc_freeze.ENV, "off")
    assert gc_freeze.freeze_startup_heap() is None
    monkeypatch.setenv(gc_freeze.ENV, "1")
    try:
        took = gc_freeze.freeze_startup_heap()
        assert took is not None and took >= 0
        assert gc_freeze.freeze_startup_heap() is None
    finally:
        import gc

        gc.unfreeze()  # give this test process its heap back
