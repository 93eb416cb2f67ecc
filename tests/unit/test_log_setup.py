"""Log lines in text and JSON, with the access log's extra fields."""

from __future__ import annotations

import json
import logging

import pytest

from llmserve.log_setup import JsonFormatter, TextFormatter, configure_logging


def record() -> logging.LogRecord:
    return logging.makeLogRecord({"name": "llmserve.access", "levelname": "INFO",
                                  "levelno": logging.INFO, "msg": "POST %s 200",
                                  "args": ("/v1/completions",), "request_id": "r1",
                                  "ttft_ms": None, "key_id": "abc"})


def test_json_lines_carry_the_extra_fields() -> None:
    line = json.loads(JsonFormatter().format(record()))
    assert line["message"] == "POST /v1/completions 200"
    assert (line["logger"], line["request_id"], line["key_id"]) == ("llmserve.access", "r1",
                                                                    "abc")
    assert line["ttft_ms"] is None and line["time"].endswith("Z")


def test_text_lines_append_the_fields_that_have_values() -> None:
    text = TextFormatter("%(name)s: %(message)s").format(record())
    assert text == "llmserve.access: POST /v1/completions 200 request_id=r1 key_id=abc"


def test_unknown_format_is_rejected() -> None:
    with pytest.raises(ValueError, match="--log-format"):
        configure_logging("INFO", "xml")


@pytest.mark.parametrize("argv", [["--log-format", "json", "serve", "--model", "m"],
                                  ["serve", "--model", "m", "--log-format", "json"]])
def test_log_format_before_or_after_the_subcommand(argv: list[str]) -> None:
    from llmserve.cli import build_parser

    assert build_parser().parse_args(argv).log_format == "json"
    assert build_parser().parse_args(["serve", "--model", "m"]).log_format == "text"
