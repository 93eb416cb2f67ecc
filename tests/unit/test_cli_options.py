"""Command-line habits users bring from `vllm serve`: --version, options after the verb."""

from __future__ import annotations

import pytest

from llmserve.cli import build_parser, main


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("llmserve ")
    assert out.split()[1][0].isdigit()


@pytest.mark.parametrize("argv", [
    ["--log-level", "debug", "serve", "--model", "m"],
    ["serve", "--model", "m", "--log-level", "debug"],
])
def test_log_level_before_or_after_the_subcommand(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).log_level == "debug"


def test_log_level_defaults_to_info_after_the_subcommand() -> None:
    assert build_parser().parse_args(["status"]).log_level == "INFO"
