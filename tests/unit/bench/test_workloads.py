from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from llmserve.bench.workloads import WORKLOADS, build_workload
from llmserve.bench.workloads.lora_mix import zipf_weights
from llmserve.bench.workloads.params import WorkloadParams
from llmserve.bench.workloads.text import HfTokenCounter
from tests.fixtures_engines import cached_tiny_model

SMALL = WorkloadParams(
    num_requests=40, input_len=32, output_len=8, gsp_num_groups=4, gsp_prompts_per_group=5,
    gsp_system_prompt_len=64, gsp_question_len=16, gsp_output_len=8, mt_num_sessions=3,
    mt_turns=4, mt_system_prompt_len=32, mt_input_len=8, mt_output_len=4,
    pr_prefix_len=32, pr_suffix_len=8, pr_num_prefixes=4, lora_num_adapters=4)


@pytest.fixture(scope="module")
def tiny_tokenizer_dir() -> Path:
    return cached_tiny_model()


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_deterministic_by_seed(name: str) -> None:
    first = build_workload(name, SMALL)
    again = build_workload(name, SMALL)
    other = build_workload(name, replace(SMALL, seed=1))
    assert first.sessions == again.sessions
    assert first.sessions != other.sessions


def test_shared_prefix_groups_share_system_prompts() -> None:
    workload = build_workload("shared-prefix", replace(SMALL, num_requests=None))
    assert workload.num_requests == 20
    by_prompt = Counter(s.system_prompt for s in workload.sessions)
    assert sorted(by_prompt.values()) == [5, 5, 5, 5]
    assert len({s.turns[0].user_text for s in workload.sessions}) == 20
    assert all(s.turns[0].output_len == 8 and s.turns[0].input_len == 80
               for s in workload.sessions)
    # shuffled: the first five are not all one group
    assert len({s.system_prompt for s in workload.sessions[:5]}) > 1


def test_shared_prefix_defaults_are_sglangs() -> None:
    params = WorkloadParams()
    assert (params.gsp_num_groups, params.gsp_prompts_per_group, params.gsp_system_prompt_len,
            params.gsp_question_len, params.gsp_output_len) == (64, 16, 2048, 128, 256)


def test_shared_prefix_num_requests_caps() -> None:
    assert build_workload("shared-prefix", replace(SMALL, num_requests=7)).num_requests == 7


def test_multi_turn_sessions() -> None:
    workload = build_workload("multi-turn", replace(SMALL, num_requests=None))
    assert len(workload.sessions) == 3
    assert workload.num_requests == 12
    for session in workload.sessions:
        assert session.is_multi_turn
        assert session.system_prompt
        assert session.turns[0].think_time_s == 0.0
        assert all(t.think_time_s > 0 for t in session.turns[1:])
        assert session.turns[0].input_len == 32 + 8
    assert len({s.session_id for s in workload.sessions}) == 3


def test_multi_turn_num_requests_keeps_whole_sessions() -> None:
    assert build_workload("multi-turn", replace(SMALL, num_requests=9)).num_requests == 8


def test_prefix_repetition_splits_requests_over_prefixes() -> None:
    workload = build_workload("prefix-repetition", replace(SMALL, num_requests=10))
    assert workload.num_requests == 10
    prefixes = Counter(" ".join(s.turns[0].user_text.split()[:32]) for s in workload.sessions)
    assert sorted(prefixes.values()) == [2, 2, 3, 3]


def test_lora_mix_is_zipf_over_adapters() -> None:
    workload = build_workload("lora-mix", replace(SMALL, num_requests=2000))
    counts = Counter(s.model for s in workload.sessions)
    assert set(counts) == {"lora-0", "lora-1", "lora-2", "lora-3"}
    assert counts["lora-0"] > counts["lora-1"] > counts["lora-3"]
    weights = zipf_weights(4, 1.0)
    assert weights[0] == pytest.approx(1 / (1 + 1 / 2 + 1 / 3 + 1 / 4))
    assert counts["lora-0"] / 2000 == pytest.approx(weights[0], abs=0.04)


def test_sharegpt_lengths_follow_the_filters() -> None:
    workload = build_workload("sharegpt", replace(SMALL, num_requests=500))
    inputs = [s.turns[0].input_len for s in workload.sessions]
    outputs = [s.turns[0].output_len for s in workload.sessions]
    assert all(4 <= i < 1024 for i in inputs)
    assert all(o >= 4 for o in outputs)
    assert all(i + o < 2048 for i, o in zip(inputs, outputs, strict=True))
    assert 100 < sum(inputs) / len(inputs) < 220  # ShareGPT: mean ~161 before filtering
    assert 200 < sum(outputs) / len(outputs) < 400  # mean ~338 before filtering


def test_random_range_ratio() -> None:
    fixed = build_workload("random", replace(SMALL, num_requests=20))
    assert {s.turns[0].input_len for s in fixed.sessions} == {32}
    varied = build_workload("random", replace(SMALL, num_requests=200, range_ratio=0.5))
    lengths = [s.turns[0].input_len for s in varied.sessions]
    assert min(lengths) >= 16 and max(lengths) <= 48 and len(set(lengths)) > 10


def test_word_lengths_without_tokenizer() -> None:
    workload = build_workload("random", replace(SMALL, num_requests=3))
    assert all(len(s.turns[0].user_text.split()) == 32 for s in workload.sessions)


def test_token_lengths_measured_with_the_tokenizer(tiny_tokenizer_dir: Path) -> None:
    counter = HfTokenCounter(tiny_tokenizer_dir)
    workload = build_workload("shared-prefix", replace(SMALL, num_requests=None),
                              counter=counter)
    system_lens = {len(counter.encode(s.system_prompt)) for s in workload.sessions}
    question_lens = [len(counter.encode(s.turns[0].user_text)) for s in workload.sessions]
    assert system_lens == {64}
    # decoding a cut id list can re-merge a token at the boundary: allow one off
    assert all(15 <= n <= 16 for n in question_lens)
    assert sum(n == 16 for n in question_lens) >= 15


def test_unknown_workload() -> None:
    with pytest.raises(ValueError, match="unknown workload"):
        build_workload("nope")


def test_multi_turn_common_prefix_and_variable_turns() -> None:
    params = replace(SMALL, num_requests=60, mt_num_sessions=100, mt_turns=3, mt_turns_max=6,
                     mt_common_prefix_len=16)
    workload = build_workload("multi-turn", params)
    assert len(workload.sessions) == 60 // 4.5 == 13
    counts = {len(s.turns) for s in workload.sessions}
    assert counts <= {3, 4, 5, 6} and len(counts) > 1
    common = {s.system_prompt[:40] for s in workload.sessions if s.system_prompt}
    assert len(common) == 1  # every session opens with the same text
    assert len({s.system_prompt for s in workload.sessions}) == 13  # and then its own
    assert all(s.turns[0].input_len == 32 + 16 + 8 for s in workload.sessions)
    # without the options: fixed turns, and sessions open with different text
    plain = build_workload("multi-turn", replace(SMALL, num_requests=None))
    assert {len(s.turns) for s in plain.sessions} == {4}
    assert len({(s.system_prompt or "")[:40] for s in plain.sessions}) == 3
