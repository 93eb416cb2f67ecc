"""Command-line habits users bring from `vllm serve`: --version, options after the verb."""

from __future__ import annotations

import pytest

from llmserve.cli import _subparser, build_parser, main, parse_args


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


# ---- `llmserve serve` as `vllm serve` ---------------------------------------------------

def test_model_is_positional_or_an_option() -> None:
    assert parse_args(["serve", "/m/tiny"]).model_path == "/m/tiny"
    assert parse_args(["serve", "--model", "/m/tiny"]).model == "/m/tiny"


def test_served_model_name_is_model_id() -> None:
    assert parse_args(["serve", "/m", "--served-model-name", "tiny"]).model_id == "tiny"
    assert parse_args(["serve", "/m", "--model-id", "tiny"]).model_id == "tiny"


def test_engine_flags_after_the_model_go_to_the_engine() -> None:
    args = parse_args(["--log-level", "debug", "serve", "/m", "--max-model-len", "1024",
                       "--enable-prefix-caching", "--port", "8001", "--engine", "sim"])
    assert args.model_path == "/m"
    assert args.port == 8001
    assert args.engine == "sim"
    assert args.engine_flags == {"max_model_len": 1024, "enable_prefix_caching": True}


def test_other_commands_still_refuse_unknown_flags() -> None:
    with pytest.raises(SystemExit):
        parse_args(["status", "--max-model-len", "1"])


def run_serve(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["serve", *argv]) == 2
    return capsys.readouterr().err


def test_model_and_a_different_model_option_are_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert "MODEL '/a' and --model '/b' differ" in run_serve(["/a", "--model", "/b"], capsys)


def test_no_model_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert "needs a MODEL" in run_serve(["--engine", "sim"], capsys)


@pytest.mark.parametrize("extra", [["--max-model-len", "64"], ["--engine-arg", "a=1"],
                                   ["--replicas", "2"]])
def test_engine_options_with_worker_urls_are_refused(
        extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    err = run_serve(["--worker-urls", "http://127.0.0.1:9", *extra], capsys)
    assert "with --worker-urls set them on the workers" in err


def test_the_same_engine_flag_both_ways_is_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    err = run_serve(["/m", "--engine", "sim", "--max-model-len", "64", "--engine-arg",
                     "max_model_len=32"], capsys)
    assert "given both as --flag and as --engine-arg" in err


def test_every_serve_option_has_help() -> None:
    serve = _subparser(build_parser(), "serve")
    missing = [a.dest for a in serve._actions if not a.help]
    assert missing == []
    assert "examples:" in serve.format_help()


def test_the_help_examples_parse() -> None:
    from llmserve.cli import SERVE_EXAMPLES

    examples = [line.split()[1:] for line in SERVE_EXAMPLES.splitlines()
                if line.strip().startswith("llmserve ")]
    assert len(examples) >= 3
    for argv in examples:
        args = parse_args(argv)
        assert args.command == argv[0]


def test_every_option_of_every_command_has_help() -> None:
    import argparse

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = {name: [a.dest for a in sub._actions if not a.help]
               for name, sub in commands.choices.items()}
    assert {name: dests for name, dests in missing.items() if dests} == {}


def test_worker_api_key_needs_worker_urls(capsys: pytest.CaptureFixture[str]) -> None:
    err = run_serve(["/m", "--engine", "sim", "--worker-api-key", "k"], capsys)
    assert "--worker-api-key needs --worker-urls" in err
