from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engines.process import EngineProcess, free_port, group_pids
from engines.protocol import EngineStartError
from tests.eventually import eventually, eventually_async

DUMMY = Path(__file__).with_name("dummy_engine_server.py")
ROOT = Path(__file__).resolve().parents[3]


def dummy(port: int, *flags: str) -> list[str]:
    return [sys.executable, str(DUMMY), "--port", str(port), *flags]


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def grandchild_pid(process: EngineProcess) -> int:
    match = re.search(r"grandchild pid (\d+)", process.log_tail())
    assert match, process.log_tail()
    return int(match.group(1))


async def test_start_wait_healthy_and_stop(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "engine.log"
    process = EngineProcess(dummy(port, "--ready-after-s", "0.5"), log_path=log_path)
    await process.start()
    await process.wait_healthy(f"http://127.0.0.1:{port}/health", timeout_s=20)
    assert process.is_alive and process.returncode is None
    assert process.pid is not None and group_pids(process.pid)

    code = await process.stop(timeout_s=10)

    assert code == 0 and not process.is_alive
    assert group_pids(process.pid) == []
    assert f"listening on port {port}" in log_path.read_text()
    assert "dummy engine stopping" in process.log_tail()


async def test_exit_before_healthy_raises_with_log_tail(tmp_path: Path) -> None:
    port = free_port()
    command = dummy(port, "--ready-after-s", "60", "--exit-after-s", "0.3", "--exit-code", "7")
    process = EngineProcess(command, log_path=tmp_path / "engine.log")
    await process.start()

    with pytest.raises(EngineStartError, match="boom: simulated crash") as error:
        await process.wait_healthy(f"http://127.0.0.1:{port}/health", timeout_s=20)

    assert "exited with code 7" in str(error.value)
    assert process.returncode == 7
    assert await process.stop() == 7


async def test_not_healthy_in_time_raises(tmp_path: Path) -> None:
    port = free_port()
    process = EngineProcess(dummy(port, "--ready-after-s", "60"), log_path=tmp_path / "e.log")
    await process.start()
    try:
        with pytest.raises(EngineStartError, match=r"not healthy .* after 1s"):
            await process.wait_healthy(f"http://127.0.0.1:{port}/health", timeout_s=1)
        assert process.is_alive
    finally:
        await process.stop()


async def test_missing_executable_is_a_start_error(tmp_path: Path) -> None:
    process = EngineProcess(["/nonexistent/python", "-V"], log_path=tmp_path / "e.log")
    await process.start()
    with pytest.raises(EngineStartError, match="cannot start '/nonexistent/python'"):
        await process.wait_healthy("http://127.0.0.1:1/health", timeout_s=20)
    assert process.returncode == 127
    assert await process.stop() == 127


async def test_stop_escalates_to_sigkill_and_kills_grandchildren(tmp_path: Path) -> None:
    port = free_port()
    command = dummy(port, "--ignore-sigterm", "--grandchild")
    process = EngineProcess(command, log_path=tmp_path / "e.log")
    await process.start()
    await process.wait_healthy(f"http://127.0.0.1:{port}/health", timeout_s=20)
    grandchild = grandchild_pid(process)

    started = time.monotonic()
    await process.stop(timeout_s=1)

    assert 0.9 < time.monotonic() - started < 10
    assert process.returncode == 128 + signal.SIGKILL
    assert not pid_alive(grandchild)


async def test_crash_after_start_is_seen_and_leftovers_are_killed(tmp_path: Path) -> None:
    port = free_port()
    command = dummy(port, "--grandchild", "--exit-after-s", "1.0", "--exit-code", "5")
    process = EngineProcess(command, log_path=tmp_path / "e.log")
    await process.start()
    await process.wait_healthy(f"http://127.0.0.1:{port}/health", timeout_s=20)
    grandchild = grandchild_pid(process)

    code = await asyncio.wait_for(process.wait(), 20)

    assert code == 5 and not process.is_alive
    assert "boom: simulated crash" in process.log_tail()
    await eventually_async(lambda: not pid_alive(grandchild))
    assert await process.stop() == 5


PARENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, re, sys
    from engines.process import EngineProcess

    async def main(command, port):
        process = EngineProcess(command)
        await process.start()
        await process.wait_healthy(f"http://127.0.0.1:{port}/health", timeout_s=20)
        grandchild = re.search(r"grandchild pid (\\d+)", process.log_tail()).group(1)
        print(process.pid, grandchild, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main(sys.argv[2:], int(sys.argv[1])))
    """
)


@pytest.mark.parametrize("how", ["sigkill", "normal_exit"])
def test_no_orphans_when_the_parent_dies(how: str) -> None:
    """SIGKILL of the gateway (PDEATHSIG path) or a plain exit (atexit path)."""
    port = free_port()
    script = PARENT_SCRIPT
    if how == "normal_exit":
        script = script.replace("await asyncio.sleep(3600)", "return")
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(port), *dummy(port, "--grandchild")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        guard_pid, grandchild = (int(field) for field in line.split())
        assert group_pids(guard_pid)
        if how == "sigkill":
            parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        eventually(lambda: group_pids(guard_pid) == [])
        assert not pid_alive(grandchild)
    finally:
        parent.kill()
        parent.wait()


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


async def test_engine_stops_when_its_guard_is_sigkilled(tmp_path: Path) -> None:
    """Ray reaps a dead worker's direct children with SIGKILL: the guard cannot react,
    so the engine must learn of it itself (PDEATHSIG set by the guard)."""
    process = EngineProcess([sys.executable, "-c", "import time; time.sleep(60)"],
                            name="guarded", log_path=tmp_path / "guarded.log")
    await process.start()
    try:
        assert process.pid is not None
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        await eventually_async(lambda: children.read_text().split())
        engine = int(children.read_text().split()[0])
        os.kill(process.pid, signal.SIGKILL)
        await eventually_async(lambda: not pid_alive(engine))
    finally:
        await process.stop()


def test_an_engine_starts_under_uvloop_in_its_own_group_of_the_gateways_session(
        tmp_path: Path) -> None:
    """The serving loop is uvloop: the guard must start there too, leading its own process
    group (for stop) inside the gateway's session (the scheduler shares the CPU fairly
    only within one session)."""
    import uvloop

    async def main() -> None:
        process = EngineProcess([sys.executable, "-c", "import time; time.sleep(30)"],
                                name="uvloop", log_path=tmp_path / "uvloop.log")
        await process.start()
        try:
            assert process.pid is not None and process.is_alive
            assert os.getpgid(process.pid) == process.pid
            assert os.getsid(process.pid) == os.getsid(0)
        finally:
            await process.stop()
        assert not process.is_alive

    uvloop.run(main())
