"""Supervise one engine server process: start it, wait until it is healthy, stop it,
and never leave an orphan behind.

Process tree::

    gateway (this process)
      └─ guard      python -c GUARD_SOURCE: leader of a new process group
           └─ engine  e.g. vLLM's API server, with its EngineCore and worker processes

Every process of the engine stays in the guard's process group, so :meth:`stop`
signals the whole group (SIGTERM, then SIGKILL). If the gateway dies, even by
SIGKILL, the kernel sends the guard ``PR_SET_PDEATHSIG`` (Linux) and the guard
SIGKILLs its group; it also polls its parent pid once a second as a fallback
(other platforms, or a parent that died before the guard was set up). vLLM needs
this: SIGKILL its API server alone and its EngineCore lives on as an orphan.

``PR_SET_PDEATHSIG`` fires when the parent *thread* that forked the guard exits,
not the parent process: start engines from a long-lived thread (the event loop
thread, which is where :func:`asyncio.create_subprocess_exec` forks), never from a
short-lived worker thread, or the engine is killed when that thread ends.

The guard stays in the gateway's session. On Linux every session is its own scheduler
group (autogroup), and a vLLM CPU engine in a session of its own, while generating,
stalled processes outside it for seconds (a 10 ms sleep overshot by 0.7-3.4 s on 2 cores;
in one session: by at most 16 ms): the gateway would wait on the engine's busy loops.

Output (stdout and stderr together) is appended to a log file; the last lines are
kept in memory for error messages.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

from engines.protocol import Engine, EngineSpec, EngineStartError

_log = logging.getLogger("engines.process")
# Environment variables holding the gateway's credentials (read by llmserve).
GATEWAY_SECRET_ENV = frozenset({"LLMSERVE_API_KEYS", "LLMSERVE_ADMIN_KEY",
                                "LLMSERVE_WORKER_API_KEY"})

PR_SET_PDEATHSIG = 1
PARENT_DEATH_SIGNAL = signal.SIGUSR1

GUARD_SOURCE = """\
import ctypes, os, signal, subprocess, sys
parent_pid, command = int(sys.argv[1]), sys.argv[2:]
def term_when_guard_dies():
    # If the guard itself is SIGKILLed (Ray reaps a dead worker's children that way),
    # the engine still gets SIGTERM and shuts down its own subprocesses.
    ctypes.CDLL(None).prctl(1, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != guard_pid:  # the guard died before the request took effect
        os._exit(1)
guard_pid = os.getpid()
def kill_group(*_):
    os.killpg(0, signal.SIGKILL)
signal.signal(signal.SIGUSR1, kill_group)
signal.signal(signal.SIGTERM, lambda *_: None)  # the engine gets it too; we wait for it
signal.signal(signal.SIGINT, lambda *_: None)
if os.getppid() != parent_pid:
    kill_group()
try:
    child = subprocess.Popen(command, preexec_fn=term_when_guard_dies)
except OSError as error:
    print(f"cannot start {command[0]!r}: {error}", flush=True)
    sys.exit(127)
while True:
    try:
        code = child.wait(timeout=1.0)
        break
    except subprocess.TimeoutExpired:
        if os.getppid() != parent_pid:
            kill_group()
sys.exit(code if code >= 0 else 128 - code)
"""

_live: set[EngineProcess] = set()  # started and not yet stopped


class EngineProcess:
    """One supervised server process (see the module docstring)."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        name: str = "engine",
        log_path: Path | None = None,
        tail_lines: int = 200,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.command = list(command)
        # the gateway's own credentials never reach an engine (or what it starts)
        base = os.environ if env is None else env
        self.env = {k: v for k, v in base.items() if k not in GATEWAY_SECRET_ENV}
        self.name = name
        self.log_path = log_path or default_log_path(name)
        self.on_line = on_line
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None

    @classmethod
    def for_engine(
        cls,
        engine: Engine,
        spec: EngineSpec,
        *,
        log_path: Path | None = None,
        tail_lines: int = 200,
    ) -> EngineProcess:
        return cls(
            engine.command(spec),
            env=engine.env(spec),
            name=f"{engine.name}-{spec.port}",
            log_path=log_path,
            tail_lines=tail_lines,
        )

    @classmethod
    async def launch(
        cls,
        engine: Engine,
        spec: EngineSpec,
        *,
        log_path: Path | None = None,
        ready_timeout_s: float = 300.0,
    ) -> EngineProcess:
        """Start the engine for ``spec`` and wait until it is healthy; stop it on failure."""
        process = cls.for_engine(engine, spec, log_path=log_path)
        await process.start()
        try:
            await process.wait_healthy(
                spec.base_url + engine.health_path, timeout_s=ready_timeout_s
            )
        except BaseException:
            await process.stop()
            raise
        return process

    @property
    def pid(self) -> int | None:
        """The guard's pid, which is also the process group id."""
        return self._proc.pid if self._proc else None

    @property
    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def returncode(self) -> int | None:
        """The engine's exit code (128 + N if killed by signal N), or None while it runs."""
        if self._proc is None or self._proc.returncode is None:
            return None
        code = self._proc.returncode
        return code if code >= 0 else 128 - code

    def log_tail(self, lines: int = 50) -> str:
        return "\n".join(list(self._tail)[-lines:])

    async def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError(f"{self.name} was already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # -I: the engine's env (PYTHONPATH of another venv...) must not reach the guard
        argv = [sys.executable, "-I", "-c", GUARD_SOURCE, str(os.getpid()), *self.command]
        self._proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
            # its own group, not its own session (see the module's doc); by preexec_fn, as
            # uvloop's subprocess_exec does not take ``process_group``
            preexec_fn=_start_guard,
        )
        _live.add(self)
        self._pump = asyncio.create_task(self._pump_output(self._proc))

    async def wait_healthy(
        self, url: str, *, timeout_s: float = 300.0, interval_s: float = 0.25,
        heartbeat_s: float = 15.0,
    ) -> None:
        """Poll ``url`` until it answers 200; raise :class:`EngineStartError` if the
        process exits first or ``timeout_s`` passes. Every ``heartbeat_s`` it logs how long
        the start has taken and the log's latest line (engines take minutes to start)."""
        if self._proc is None:
            raise RuntimeError(f"{self.name} was never started")
        pgid = self._proc.pid
        started = time.monotonic()
        deadline = started + timeout_s
        next_heartbeat = started + heartbeat_s
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0), trust_env=False) as client:
            while True:
                if not self.is_alive:
                    kill_group(pgid, signal.SIGKILL)  # leftovers would hold the pipe open
                    await self._drain_output()
                    raise self._start_error(
                        f"{self.name} exited with code {self.returncode} before {url} was "
                        "healthy")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url)).status_code == 200:
                        return
                now = time.monotonic()
                if now >= deadline:
                    raise self._start_error(
                        f"{self.name} was not healthy at {url} after {timeout_s:.0f}s")
                if now >= next_heartbeat:
                    next_heartbeat = now + heartbeat_s
                    _log.info("%s: starting for %.0f s; engine log: %s", self.name,
                             now - started, self.last_line() or "(empty)")
                await asyncio.sleep(interval_s)

    def last_line(self) -> str:
        return next((line for line in reversed(self._tail) if line.strip()), "").strip()

    def _start_error(self, what: str) -> EngineStartError:
        last = self.last_line()
        return EngineStartError(
            f"{what}: {last or 'the engine printed nothing'} (engine log: {self.log_path})",
            log_path=str(self.log_path), log_tail=self.log_tail())

    async def wait(self) -> int:
        """Wait for the process to exit; kill what it left behind; return :attr:`returncode`."""
        if self._proc is None:
            raise RuntimeError(f"{self.name} was never started")
        await self._wait_exit(timeout_s=None)
        kill_group(self._proc.pid, signal.SIGKILL)
        await self._drain_output()
        code = self.returncode
        assert code is not None
        return code

    async def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``timeout_s``; return the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            kill_group(proc.pid, signal.SIGTERM)
            if not await self._wait_exit(timeout_s):
                kill_group(proc.pid, signal.SIGKILL)
                await self._wait_exit(timeout_s=None)
        kill_group(proc.pid, signal.SIGKILL)
        await wait_group_gone(proc.pid, timeout_s=5.0)
        await self._drain_output()
        _live.discard(self)
        return self.returncode

    async def _wait_exit(self, timeout_s: float | None, interval_s: float = 0.05) -> bool:
        """Wait until the guard has exited; True if it did within ``timeout_s``.

        Not ``Process.wait()``: that also waits for the output pipe to close, which
        never happens while a leftover grandchild still holds it open.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.is_alive:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(interval_s)
        return True

    async def _pump_output(self, proc: asyncio.subprocess.Process) -> None:
        """Copy the engine's output to its log file and tail until it closes. Reading
        never stops (a full pipe would block the engine): when the file cannot be
        written (disk full, file removed) the output is still read and tailed."""
        assert proc.stdout is not None
        partial = b""
        log_file = None
        try:
            log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed below)
        except OSError as exc:
            _log.error("%s: cannot open log file %s: %r", self.name, self.log_path, exc)
        try:
            while chunk := await proc.stdout.read(65536):
                if log_file is not None:
                    try:
                        log_file.write(chunk)
                        log_file.flush()
                    except OSError as exc:
                        _log.error("%s: cannot write log file %s (%r); keeping only the "
                                   "last lines in memory", self.name, self.log_path, exc)
                        log_file.close()
                        log_file = None
                *lines, partial = (partial + chunk).split(b"\n")
                self._keep(lines)
            self._keep([partial] if partial else [])
        finally:
            if log_file is not None:
                log_file.close()

    def _keep(self, lines: list[bytes]) -> None:
        for raw in lines:
            line = raw.decode("utf-8", errors="replace").rstrip("\r")
            self._tail.append(line)
            if self.on_line is not None:
                with contextlib.suppress(Exception):  # a failing logger must not stall the pipe
                    self.on_line(line)

    async def _drain_output(self, timeout_s: float = 5.0) -> None:
        if self._pump is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._pump), timeout_s)


def _start_guard() -> None:
    """preexec_fn: the guard leads a process group of its own; on Linux, ask the kernel to
    signal it when its parent thread exits."""
    os.setpgid(0, 0)
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(PARENT_DEATH_SIGNAL), 0, 0, 0)


def kill_group(pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to process group ``pgid``; a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes in group ``pgid`` (Linux ``/proc``; [] elsewhere)."""
    pids: list[int] = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


async def wait_group_gone(pgid: int, *, timeout_s: float) -> bool:
    """Wait until no live process is left in group ``pgid``; True if none is."""
    deadline = time.monotonic() + timeout_s
    while group_pids(pgid):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def default_log_path(name: str) -> Path:
    directory = Path(tempfile.gettempdir()) / "llmserve-engines"
    return directory / f"{name}-{os.getpid()}-{time.monotonic_ns()}.log"


async def stop_all(timeout_s: float = 30.0) -> None:
    """Stop every engine process this process started and has not stopped yet."""
    await asyncio.gather(*(process.stop(timeout_s) for process in list(_live)))


def _stop_all_at_exit(grace_s: float = 5.0) -> None:
    """atexit: the event loop may be gone, so signal the groups directly."""
    pgids = [process.pid for process in list(_live) if process.pid is not None]
    for pgid in pgids:
        kill_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(group_pids(pgid) for pgid in pgids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pgid in pgids:
        kill_group(pgid, signal.SIGKILL)


atexit.register(_stop_all_at_exit)
