"""Engine flags given to `llmserve serve` as themselves, as `vllm serve` takes them."""

from __future__ import annotations

import pytest

from llmserve.engine_flags import split_engine_flags
from llmserve.serve.exceptions import ConfigError

KNOWN = {"--model", "--port", "--worker-urls", "--engine"}


def test_unknown_flags_and_their_values_go_to_the_engine() -> None:
    split = split_engine_flags(
        ["DIR", "--max-model-len", "1024", "--enable-prefix-caching", "--port", "8001",
         "--dtype=float16", "--lora-modules", "a=/x", "b=/y", "--seed", "-1"], KNOWN)
    assert split.own == ["DIR", "--port", "8001"]
    assert split.engine_kwargs == {
        "max_model_len": 1024, "enable_prefix_caching": True, "dtype": "float16",
        "lora_modules": ["a=/x", "b=/y"], "seed": -1}


def test_known_flags_keep_their_values() -> None:
    split = split_engine_flags(["--worker-urls", "http://a", "http://b", "--block-size",
                                "32"], KNOWN)
    assert split.own == ["--worker-urls", "http://a", "http://b"]
    assert split.engine_kwargs == {"block_size": 32}


def test_json_values_and_negated_flags_pass_unchanged() -> None:
    split = split_engine_flags(["--no-enable-prefix-caching", "--speculative-config",
                                '{"method": "ngram"}'], KNOWN)
    assert split.engine_kwargs == {"no_enable_prefix_caching": True,
                                   "speculative_config": {"method": "ngram"}}


def test_a_repeated_flag_collects_its_values() -> None:
    split = split_engine_flags(["--middleware", "a.b", "--middleware", "c.d"], KNOWN)
    assert split.engine_kwargs == {"middleware": ["a.b", "c.d"]}


def test_a_repeated_switch_is_refused() -> None:
    with pytest.raises(ConfigError, match="--enforce-eager given twice"):
        split_engine_flags(["--enforce-eager", "--enforce-eager"], KNOWN)


def test_a_double_dash_ends_flag_splitting() -> None:
    split = split_engine_flags(["--", "--not-a-flag"], KNOWN)
    assert split.own == ["--", "--not-a-flag"]
    assert split.engine_kwargs == {}
