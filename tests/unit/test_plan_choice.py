import random
import time

from generation.execution import RetryPolicy, spread_long_wait
from generation.plan import BreakerState, CircuitBreaker, PlanMode, mode_from_environment, plan_for
from generation.store import Plan
from settings import load_settings


def test_environment_decides_the_default_mode() -> None:
    assert mode_from_environment(load_settings(_env_file=None)) is PlanMode.auto
    assert mode_from_environment(load_settings(_env_file=None, use_queue=False)) is PlanMode.b
    assert mode_from_environment(load_settings(_env_file=None, fallback_mode=True)) is PlanMode.b


def test_forced_modes_and_missing_queue() -> None:
    breaker = CircuitBreaker(cooldown=10)
    assert plan_for(PlanMode.b, True, breaker) is Plan.B
    assert plan_for(PlanMode.a, True, breaker) is Plan.A
    assert plan_for(PlanMode.a, False, breaker) is Plan.B
    assert plan_for(PlanMode.auto, True, breaker) is Plan.A


def test_breaker_opens_on_failure_and_probes_after_cooldown() -> None:
    breaker = CircuitBreaker(cooldown=0.05)
    assert breaker.record_failure() is True
    assert breaker.state is BreakerState.open
    assert plan_for(PlanMode.auto, True, breaker) is Plan.B
    breaker.opened_at = time.monotonic() - 1  # the cooldown has passed
    assert plan_for(PlanMode.auto, True, breaker) is Plan.A  # the probe
    assert breaker.state is BreakerState.half_open
    assert plan_for(PlanMode.auto, True, breaker) is Plan.B  # only one probe at a time
    assert breaker.record_success() is True
    assert breaker.state is BreakerState.closed


def test_retry_delay_grows_is_capped_and_honours_retry_after() -> None:
    policy = RetryPolicy(base=1, cap=8, jitter=0)
    assert [policy.delay(attempt) for attempt in (1, 2, 3, 4, 5, 6)] == [1, 2, 4, 8, 8, 8]
    assert policy.delay(3, retry_after=30) == 30
    jittered = RetryPolicy(base=10, cap=100, jitter=0.2)
    assert all(8 <= jittered.delay(1) <= 12 for _ in range(50))


def test_long_waits_come_back_spread_over_half_their_delay_either_way() -> None:
    # A burst's held generations must drift apart, not poll the provider in waves: 15 s comes back
    # anywhere from 7.5 to 22.5 s, and 400 draws reach both ends of that (a ±20 % spread would not).
    random.seed(8)
    delays = [spread_long_wait(15.0) for _ in range(400)]
    assert all(7.5 <= delay <= 22.5 for delay in delays)
    assert min(delays) < 8.5 and max(delays) > 21.5
