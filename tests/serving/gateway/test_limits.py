"""The rate limiter against a real Redis: exact per-minute limits for keys and organisations, tokens
counted at admission and at completion, the monthly budget, OpenAI's headers, one round trip per call,
and no overshoot when several processes race for the last requests of a minute."""

from __future__ import annotations

import asyncio
import datetime
import multiprocessing
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio
import redis.asyncio.connection
from django.conf import settings

from serving.gateway import limits
from serving.gateway.limits import Decision, Limits, RateLimiter, format_duration

LIMITS_REDIS_DB = 9
ROOMY = Limits(key_rpm=None, key_tpm=None, org_rpm=10_000, org_tpm=10**9, org_monthly_tokens=10**12)
T = TypeVar("T")


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database of these tests' own, emptied before and after each test."""
    url = settings.REDIS_URL.rsplit("/", 1)[0] + f"/{LIMITS_REDIS_DB}"
    connection = redis.Redis.from_url(url)
    connection.flushdb()
    try:
        yield url
    finally:
        connection.flushdb()
        connection.close()


class CountingConnection(redis.asyncio.connection.Connection):
    """Counts what the client writes to the socket: one write per command (no pipelines here), so one
    per round trip."""

    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        await super().send_packed_command(command, check_health)


def with_limiter(url: str, body: Callable[[RateLimiter], Awaitable[T]], **options: Any) -> T:
    window_seconds = options.pop("window_seconds", 60)

    async def main() -> T:
        connection = redis.asyncio.Redis.from_url(url, **options)
        try:
            return await body(RateLimiter(connection, window_seconds=window_seconds))
        finally:
            await connection.aclose()

    return asyncio.run(main())


async def admit_times(
    limiter: RateLimiter, n: int, limits: Limits, key_id: int = 1, tokens: int = 1
) -> list[Decision]:
    return [
        await limiter.admit(key_id=key_id, org_id=1, limits=limits, prompt_tokens=tokens) for _ in range(n)
    ]


def test_exactly_the_key_limit_is_admitted_then_refused_with_its_reason(redis_url: str) -> None:
    decisions = with_limiter(
        redis_url, lambda limiter: admit_times(limiter, 7, Limits(5, None, 100, 10**6, 10**9))
    )
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.remaining_requests for d in decisions] == [4, 3, 2, 1, 0, 0, 0]
    refused = decisions[5]
    assert refused.reason == "requests per minute of this API key"
    assert 58 <= refused.retry_after_seconds <= 60  # when the first of the five leaves the minute


def test_a_request_leaves_the_window_when_it_is_older_than_the_window(redis_url: str) -> None:
    async def body(limiter: RateLimiter) -> tuple[Decision, Decision]:
        await admit_times(limiter, 2, Limits(2, None, 100, 10**6, 10**9))
        refused = (await admit_times(limiter, 1, Limits(2, None, 100, 10**6, 10**9)))[0]
        await asyncio.sleep(2.05)
        return refused, (await admit_times(limiter, 1, Limits(2, None, 100, 10**6, 10**9)))[0]

    refused, later = with_limiter(redis_url, body, window_seconds=2)
    assert not refused.allowed and refused.retry_after_seconds == 2
    assert later.allowed


def test_prompt_tokens_count_at_admission_and_completion_tokens_when_done(redis_url: str) -> None:
    per_minute = Limits(key_rpm=None, key_tpm=100, org_rpm=100, org_tpm=10**6, org_monthly_tokens=10**9)

    async def body(limiter: RateLimiter) -> list[Decision]:
        first = await limiter.admit(key_id=1, org_id=1, limits=per_minute, prompt_tokens=60)
        await limiter.add_tokens(key_id=1, org_id=1, tokens=30)  # the first response's completion
        too_many = await limiter.admit(key_id=1, org_id=1, limits=per_minute, prompt_tokens=20)
        just_fits = await limiter.admit(key_id=1, org_id=1, limits=per_minute, prompt_tokens=10)
        return [first, too_many, just_fits]

    first, too_many, just_fits = with_limiter(redis_url, body)
    assert first.allowed and first.remaining_tokens == 40 and first.limit_tokens == 100
    assert not too_many.allowed and too_many.reason == "tokens per minute of this API key"
    assert too_many.remaining_tokens == 10 and 58 <= too_many.retry_after_seconds <= 60
    assert just_fits.allowed and just_fits.remaining_tokens == 0


def test_completion_tokens_may_overshoot_and_then_refuse_the_next_request(redis_url: str) -> None:
    per_minute = Limits(key_rpm=None, key_tpm=100, org_rpm=100, org_tpm=10**6, org_monthly_tokens=10**9)

    async def body(limiter: RateLimiter) -> Decision:
        await limiter.admit(key_id=1, org_id=1, limits=per_minute, prompt_tokens=10)
        await limiter.add_tokens(key_id=1, org_id=1, tokens=500)
        return await limiter.admit(key_id=1, org_id=1, limits=per_minute, prompt_tokens=1)

    refused = with_limiter(redis_url, body)
    assert not refused.allowed and refused.remaining_tokens == 0


def test_a_prompt_larger_than_the_tokens_per_minute_is_refused(redis_url: str) -> None:
    per_minute = Limits(key_rpm=None, key_tpm=None, org_rpm=100, org_tpm=50, org_monthly_tokens=10**9)
    refused = with_limiter(redis_url, lambda limiter: admit_times(limiter, 1, per_minute, tokens=51))[0]
    assert not refused.allowed and refused.reason == "tokens per minute of the organisation"
    assert refused.retry_after_seconds == 60


def test_the_organisation_limit_is_shared_by_its_keys(redis_url: str) -> None:
    shared = Limits(key_rpm=None, key_tpm=None, org_rpm=3, org_tpm=10**6, org_monthly_tokens=10**9)

    async def body(limiter: RateLimiter) -> list[Decision]:
        return [
            *await admit_times(limiter, 2, shared, key_id=1),
            *await admit_times(limiter, 2, shared, key_id=2),
        ]

    decisions = with_limiter(redis_url, body)
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[-1].reason == "requests per minute of the organisation"
    assert decisions[-1].limit_requests == 3


def test_headers_show_the_limit_with_fewer_left(redis_url: str) -> None:
    both = Limits(key_rpm=10, key_tpm=None, org_rpm=3, org_tpm=1000, org_monthly_tokens=10**9)
    decision = with_limiter(redis_url, lambda limiter: admit_times(limiter, 1, both, tokens=100))[0]
    assert (decision.limit_requests, decision.remaining_requests) == (3, 2)
    assert (decision.limit_tokens, decision.remaining_tokens) == (1000, 900)


def test_the_monthly_budget_refuses_until_next_month(redis_url: str) -> None:
    budget = Limits(key_rpm=None, key_tpm=None, org_rpm=100, org_tpm=10**6, org_monthly_tokens=100)

    async def body(limiter: RateLimiter) -> list[Decision]:
        first = await limiter.admit(key_id=1, org_id=7, limits=budget, prompt_tokens=60)
        await limiter.add_tokens(key_id=1, org_id=7, tokens=30)
        refused = await limiter.admit(key_id=2, org_id=7, limits=budget, prompt_tokens=20)
        return [first, refused]

    first, refused = with_limiter(redis_url, body)
    now = datetime.datetime.now(datetime.UTC)
    next_month = datetime.datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=datetime.UTC)
    assert first.allowed
    assert not refused.allowed and refused.reason == "monthly token budget of the organisation"
    assert abs(refused.retry_after_seconds - (next_month - now).total_seconds()) < 5
    month_key = f"gw:month:org:7:{now:%Y-%m}"
    assert redis.Redis.from_url(redis_url).get(month_key) == b"90"


def test_every_counter_expires_on_its_own(redis_url: str) -> None:
    async def body(limiter: RateLimiter) -> None:
        await admit_times(limiter, 3, Limits(5, 1000, 100, 10**6, 10**9), tokens=10)
        await limiter.add_tokens(key_id=1, org_id=1, tokens=5)

    with_limiter(redis_url, body)
    connection = redis.Redis.from_url(redis_url)
    ttls = {key.decode(): connection.ttl(key) for key in connection.keys("*")}
    assert len(ttls) == 5, ttls  # requests and tokens of the key and of the org, the org's month
    assert all(0 < ttl <= 62 for key, ttl in ttls.items() if ":month:" not in key), ttls
    assert all(0 < ttl <= 32 * 86400 for ttl in ttls.values()), ttls


def test_headers_have_openai_names_and_formats(redis_url: str) -> None:
    per_minute = Limits(key_rpm=None, key_tpm=None, org_rpm=60, org_tpm=1000, org_monthly_tokens=10**9)
    headers = with_limiter(redis_url, lambda limiter: admit_times(limiter, 1, per_minute, tokens=16))[
        0
    ].headers()
    assert headers == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "984",
        "x-ratelimit-reset-tokens": headers["x-ratelimit-reset-tokens"],
    }
    assert headers["x-ratelimit-reset-tokens"] in {"59s", "1m0s"}  # the current second leaves in 59–60 s


@pytest.mark.parametrize(
    ("milliseconds", "written"),
    [(0, "0s"), (12, "12ms"), (999, "999ms"), (1000, "1s"), (1500, "2s"), (12_000, "12s"), (62_000, "1m2s"),
     (360_000, "6m0s"), (3_600_000, "1h0m0s")],
)  # fmt: skip
def test_durations_are_written_as_openai_does(milliseconds: int, written: str) -> None:
    assert format_duration(milliseconds) == written


def test_admit_and_add_tokens_are_one_round_trip_each(redis_url: str) -> None:
    async def body(limiter: RateLimiter) -> int:
        await admit_times(limiter, 1, ROOMY)  # connects and makes sure Redis has the scripts
        await limiter.add_tokens(key_id=1, org_id=1, tokens=1)
        CountingConnection.sent = 0
        await admit_times(limiter, 20, ROOMY)
        for _ in range(10):
            await limiter.add_tokens(key_id=1, org_id=1, tokens=1)
        return CountingConnection.sent

    assert with_limiter(redis_url, body, connection_class=CountingConnection) == 30


def test_a_script_redis_has_not_seen_costs_one_eval_then_is_cached(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A script body Redis has never seen behaves like the cache after a restart or SCRIPT FLUSH.
    unseen = limits._Script(limits.ADMIT_SCRIPT.source + f"\n-- {uuid.uuid4()}\n")
    monkeypatch.setattr(limits, "ADMIT_SCRIPT", unseen)

    async def body(limiter: RateLimiter) -> list[int]:
        await limiter.redis.ping()
        sent = []
        for _ in range(2):
            CountingConnection.sent = 0
            assert (await admit_times(limiter, 1, ROOMY))[0].allowed
            sent.append(CountingConnection.sent)
        return sent

    assert with_limiter(redis_url, body, connection_class=CountingConnection) == [
        2,
        1,
    ]  # EVALSHA+EVAL, EVALSHA


OVERSHOOT_RPM = 50


def hammer(url: str, barrier: Any, seconds: float, tasks: int, results: Any) -> None:
    """One gateway-like process: `tasks` concurrent callers admit requests for one key as fast as they
    can for `seconds`, starting together with the other processes."""

    async def main() -> tuple[int, int]:
        connection = redis.asyncio.Redis.from_url(url)
        limiter = RateLimiter(connection)
        hammering = Limits(OVERSHOOT_RPM, None, 10_000, 10**9, 10**12)
        admitted = refused = 0

        async def caller() -> None:
            nonlocal admitted, refused
            while time.monotonic() < deadline:
                decision = await limiter.admit(key_id=42, org_id=42, limits=hammering, prompt_tokens=1)
                admitted, refused = admitted + decision.allowed, refused + (not decision.allowed)

        await connection.ping()
        await asyncio.to_thread(barrier.wait)
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(caller() for _ in range(tasks)))
        await connection.aclose()
        return admitted, refused

    results.put(asyncio.run(main()))


def test_processes_racing_for_one_key_never_overshoot(redis_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    processes = [
        context.Process(target=hammer, args=(redis_url, barrier, 2.0, 32, results)) for _ in range(2)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert sum(admitted for admitted, _ in outcomes) == OVERSHOOT_RPM
    assert all(refused > 100 for _, refused in outcomes), outcomes  # both processes really raced
    assert redis.Redis.from_url(redis_url).zcard("gw:rpm:key:42") == OVERSHOOT_RPM
