from __future__ import annotations

import pytest

from engines.sim.kv_cache import KVCache
from engines.sim.lora_slots import LoraSlots
from engines.sim.request import LoraRef, RemotePrefill, RequestStatus, SamplingSpec, SimRequest
from engines.sim.scheduler import ScheduledChunk, Scheduler, SchedulerConfig

BLOCK = 4


def make_request(
    request_id: str,
    prompt: list[int],
    max_tokens: int = 4,
    lora: LoraRef | None = None,
    remote: RemotePrefill | None = None,
) -> SimRequest:
    return SimRequest(
        request_id=request_id,
        prompt_token_ids=tuple(prompt),
        sampling=SamplingSpec(max_tokens=max_tokens, eos_token_id=0),
        output_plan=(7,),
        block_size=BLOCK,
        lora=lora,
        remote_prefill=remote,
    )


def make_scheduler(num_blocks: int = 64, transfer_s: float = 0.0, **config: int) -> Scheduler:
    return Scheduler(
        SchedulerConfig(**config), KVCache(num_blocks, BLOCK), lambda n: transfer_s * n
    )


def test_max_num_seqs_limits_the_running_batch() -> None:
    scheduler = make_scheduler(max_num_seqs=2)
    for i in range(3):
        scheduler.add(make_request(f"r{i}", [i + 1] * 5))
    plan = scheduler.schedule(0.0)
    assert [c.request_id for c in plan.chunks] == ["r0", "r1"]
    assert (scheduler.num_running, scheduler.num_waiting) == (2, 1)


def test_token_budget_and_chunked_prefill() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=10)
    scheduler.add(make_request("long", list(range(1, 26))))
    scheduler.add(make_request("short", [99, 98, 97]))
    plans = []
    outputs = []
    for _ in range(3):
        plan = scheduler.schedule(0.0)
        plans.append(plan.chunks)
        outputs.append(scheduler.update(plan))
    assert plans[0] == (ScheduledChunk("long", 10, 0),)
    assert plans[1] == (ScheduledChunk("long", 10, 10),)
    # The prefill's last 5 tokens leave 5 of the budget for the second request.
    assert plans[2] == (ScheduledChunk("long", 5, 20), ScheduledChunk("short", 3, 0))
    assert outputs[0] == [] and outputs[1] == []
    assert [o.request_id for o in outputs[2]] == ["long", "short"]
    # Then decode: one token each per step.
    assert scheduler.schedule(0.0).chunks == (
        ScheduledChunk("long", 1, 25),
        ScheduledChunk("short", 1, 3),
    )


def test_request_finishes_at_max_tokens_and_frees_blocks() -> None:
    scheduler = make_scheduler(num_blocks=16)
    scheduler.add(make_request("a", [1, 2, 3], max_tokens=2))
    first = scheduler.update(scheduler.schedule(0.0))
    assert first[0].finish is None and first[0].token_id == 7
    second = scheduler.update(scheduler.schedule(0.0))
    assert second[0].finish is RequestStatus.FINISHED_LENGTH
    assert second[0].block_ids == (1,)
    assert not scheduler.has_work
    assert scheduler.kv_cache.num_free_blocks == 15


def test_prefix_hits_are_counted_at_admission() -> None:
    scheduler = make_scheduler()
    prompt = list(range(1, 11))
    scheduler.add(make_request("a", prompt, max_tokens=1))
    scheduler.update(scheduler.schedule(0.0))
    scheduler.add(make_request("b", prompt, max_tokens=1))
    plan = scheduler.schedule(0.0)
    assert plan.chunks == (ScheduledChunk("b", 2, 8),)
    stats = scheduler.kv_cache.stats
    assert (stats.queries, stats.hits) == (20, 8)
    outputs = scheduler.update(plan)
    assert outputs[0].num_cached_prompt_tokens == 8


def test_requests_in_the_same_step_share_blocks_cached_at_allocation() -> None:
    scheduler = make_scheduler()
    prompt = list(range(1, 11))
    scheduler.add(make_request("a", prompt))
    scheduler.add(make_request("b", prompt))
    plan = scheduler.schedule(0.0)
    assert plan.chunks == (ScheduledChunk("a", 10, 0), ScheduledChunk("b", 2, 8))


def test_preemption_when_out_of_blocks() -> None:
    # 4 usable blocks of 4 tokens; two requests of 7 prompt tokens hold 2 blocks each.
    scheduler = make_scheduler(num_blocks=5, max_num_batched_tokens=64)
    scheduler.add(make_request("a", [1] * 7, max_tokens=8))
    scheduler.add(make_request("b", [2] * 7, max_tokens=8))
    scheduler.update(scheduler.schedule(0.0))  # both prefilled; token 8 sampled
    plan = scheduler.schedule(0.0)  # token 8 fits in block 2 of each
    assert len(plan.chunks) == 2 and plan.preempted == ()
    scheduler.update(plan)
    plan = scheduler.schedule(0.0)  # token 9 needs a 3rd block each: b is preempted
    assert plan.preempted == ("b",)
    assert [c.request_id for c in plan.chunks] == ["a"]
    assert scheduler.waiting[0].request_id == "b"
    assert scheduler.waiting[0].status is RequestStatus.PREEMPTED
    assert scheduler.waiting[0].num_computed_tokens == 0
    assert scheduler.num_preemptions == 1
    # Re-admission looks the prefix up again but counts as preempted, not as a new query.
    queries_before = scheduler.kv_cache.stats.queries
    steps = 0
    while scheduler.has_work and steps < 50:
        scheduler.update(scheduler.schedule(0.0))
        steps += 1
    assert scheduler.kv_cache.stats.queries == queries_before
    assert scheduler.kv_cache.stats.preempted_requests == 1
    assert not scheduler.has_work


def test_abort_frees_blocks() -> None:
    scheduler = make_scheduler(num_blocks=8)
    scheduler.add(make_request("a", [1] * 9))
    scheduler.schedule(0.0)
    assert scheduler.abort("a") is not None
    assert scheduler.num_running == 0
    assert scheduler.kv_cache.num_free_blocks == 7
    assert scheduler.abort("a") is None


def test_max_loras_limits_distinct_adapters_per_batch() -> None:
    scheduler = make_scheduler(max_loras=1)
    scheduler.add(make_request("a", [1, 2], lora=LoraRef("x", "/x")))
    scheduler.add(make_request("b", [3, 4], lora=LoraRef("y", "/y")))
    scheduler.add(make_request("c", [5, 6], lora=LoraRef("x", "/x")))
    scheduler.add(make_request("d", [7, 8]))
    plan = scheduler.schedule(0.0)
    assert [c.request_id for c in plan.chunks] == ["a", "c", "d"]
    assert plan.lora_loads == 1
    assert [r.request_id for r in scheduler.waiting] == ["b"]
    assert scheduler.schedule(0.0).lora_loads == 0  # x stays resident


def test_lora_slots_are_lru() -> None:
    slots = LoraSlots(max_loras=2)
    slots, loads = slots.use(["a"])
    assert (slots.resident, loads) == (("a",), 1)
    slots, loads = slots.use(["b"])
    assert (slots.resident, loads) == (("a", "b"), 1)
    slots, loads = slots.use(["a"])
    assert (slots.resident, loads) == (("b", "a"), 0)
    slots, loads = slots.use(["c"])  # evicts b, the least recently used
    assert (slots.resident, loads) == (("a", "c"), 1)
    with pytest.raises(ValueError):
        slots.use(["a", "b", "c"])
    assert slots.without("a").resident == ("c",)


def test_remote_prefill_waits_for_transfer_then_recomputes_last_token() -> None:
    scheduler = make_scheduler(transfer_s=0.001)
    prompt = list(range(1, 11))
    scheduler.add(make_request("d", prompt, remote=RemotePrefill(10)))
    plan = scheduler.schedule(0.0)
    assert plan.chunks == ()
    request = scheduler.waiting[0]
    assert request.status is RequestStatus.WAITING_FOR_REMOTE_KV
    assert scheduler.next_kv_ready_s() == pytest.approx(0.010)
    assert scheduler.kv_cache.stats.queries == 10
    assert scheduler.schedule(0.005).chunks == ()
    plan = scheduler.schedule(0.010)
    assert plan.chunks == (ScheduledChunk("d", 1, 9),)
    (output,) = scheduler.update(plan)
    assert output.token_id == 7
