"""An engine that cannot start ends `llmserve serve` with one clear line, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engines.process import free_port


def test_engine_start_failure_is_one_line_with_the_log_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    result = subprocess.run(
        [sys.executable, "-m", "llmserve.cli", "serve", "--engine", "sim", "--model",
         str(missing), "--port", str(free_port())],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("llmserve: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "failed to start" in lines[0]
    log_path = lines[0].rsplit("(engine log: ", 1)[1].split(")")[0]
    assert Path(log_path).is_file()
    assert "No such file or directory" in lines[0]
