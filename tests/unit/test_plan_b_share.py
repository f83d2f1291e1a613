"""The A/B split of new generations between the plans (generation/plan.py): deterministic per id, close
to the share set, and never above the breaker, the queue's absence or a forced mode."""

import time
import uuid

import pytest

from generation.plan import (
    BreakerState,
    CircuitBreaker,
    PlanMode,
    in_plan_b_share,
    parse_share,
    plan_for,
    share_bucket,
)
from generation.store import Plan
from settings import SettingsError, load_settings

IDS = [uuid.UUID(int=number * 7919 + 1).hex for number in range(10_000)]


@pytest.mark.parametrize("share", [0, 1, 10, 30, 50, 77, 100])
def test_the_share_of_ten_thousand_ids_lands_within_two_points(share: int) -> None:
    on_plan_b = sum(
        plan_for(PlanMode.auto, True, CircuitBreaker(10), plan_b_share=share, generation_id=i) is Plan.B
        for i in IDS
    )
    assert abs(on_plan_b / len(IDS) * 100 - share) <= 2
    if share in (0, 100):
        assert on_plan_b == share * len(IDS) // 100  # the ends are exact: none, or all


def test_the_same_id_always_lands_on_the_same_plan() -> None:
    breaker = CircuitBreaker(cooldown=10)
    for generation_id in IDS[:500]:
        plans = {
            plan_for(PlanMode.auto, True, breaker, plan_b_share=30, generation_id=generation_id)
            for _ in range(3)
        }
        assert len(plans) == 1
        assert plans == {Plan.B if share_bucket(generation_id) < 30 else Plan.A}
    # Fixed for every process and release: a hash of the id, not Python's per-process salted hash().
    assert share_bucket("0" * 32) == share_bucket("0" * 32) == 28


def test_a_larger_share_only_adds_ids_to_plan_b() -> None:
    """Raising the share keeps every id that was on Plan B there: the split is a threshold, not a draw."""
    for generation_id in IDS[:2000]:
        if in_plan_b_share(generation_id, 20):
            assert in_plan_b_share(generation_id, 40)


def test_forced_modes_and_a_missing_queue_ignore_the_share() -> None:
    breaker = CircuitBreaker(cooldown=10)
    for generation_id in IDS[:200]:
        assert plan_for(PlanMode.a, True, breaker, plan_b_share=100, generation_id=generation_id) is Plan.A
        assert plan_for(PlanMode.b, True, breaker, plan_b_share=0, generation_id=generation_id) is Plan.B
        assert plan_for(PlanMode.auto, False, breaker, plan_b_share=0, generation_id=generation_id) is Plan.B


def test_an_open_breaker_sends_everything_to_plan_b_whatever_the_share() -> None:
    breaker = CircuitBreaker(cooldown=60)
    breaker.record_failure()
    plans = {plan_for(PlanMode.auto, True, breaker, plan_b_share=10, generation_id=i) for i in IDS[:500]}
    assert plans == {Plan.B}


def test_a_generation_in_the_share_takes_no_probe_from_plan_a() -> None:
    breaker = CircuitBreaker(cooldown=0.05)
    breaker.record_failure()
    breaker.opened_at = time.monotonic() - 1  # the cooldown has passed: the next Plan A candidate probes
    in_share = next(i for i in IDS if share_bucket(i) < 50)
    out_of_share = next(i for i in IDS if share_bucket(i) >= 50)
    assert plan_for(PlanMode.auto, True, breaker, plan_b_share=50, generation_id=in_share) is Plan.B
    assert breaker.state is BreakerState.open  # the probe is still there to take
    assert plan_for(PlanMode.auto, True, breaker, plan_b_share=50, generation_id=out_of_share) is Plan.A
    assert breaker.state is BreakerState.half_open


def test_parse_share_takes_whole_percents_only() -> None:
    assert [parse_share(value) for value in ("0", "30", " 100 ", "007")] == [0, 30, 100, 7]
    for refused in ("150", "101", "-1", "x", "", None, "3.5", "1e2", "٣", "+5", "30%", "1000"):
        assert parse_share(refused) is None, refused


def test_the_environment_default_is_no_share_and_is_bounded() -> None:
    assert load_settings(_env_file=None).plan_b_share == 0
    assert load_settings(_env_file=None, plan_b_share=25).plan_b_share == 25
    with pytest.raises(SettingsError, match="PLAN_B_SHARE"):
        load_settings(_env_file=None, plan_b_share=101)
