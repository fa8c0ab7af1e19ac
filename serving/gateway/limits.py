"""Rate limits and the monthly token budget, enforced in Redis: the one module that holds Redis scripts.

Every gateway process shares the counters through Redis, and each decision is one Lua script, so it is
atomic: two processes can never both take the last request of a minute. The script reads the clock with
Redis TIME, so processes whose clocks disagree still agree on the window.

Tokens are counted when they are known: the (estimated) prompt tokens at admission, the rest
(completion tokens, and any correction of the estimate) by `add_tokens` when the response is finished;
a call the engine refused is given its admission estimate back by `give_back_tokens`.
A response may therefore push a token counter over its limit; the next admission is then refused until
enough tokens leave the window. Requests are counted only at admission and never go over.

Windows, and why:

- Requests per minute: a sorted set per key and per organisation, one entry per admitted request
  (score: Redis TIME in microseconds). This is a true sliding log: in *every* 60-second interval, at any
  microsecond offset, at most the limit is admitted, with zero overshoot. It costs O(log n) per admission
  and at most `limit` entries of memory, because refused requests are not logged.
- Tokens per minute: a hash per key and per organisation with one field per second (tokens admitted or
  reported in that second) and a running total. The window is the current second and the 59 before it,
  so a token leaves it between 59 and 60 seconds after it was counted: over an arbitrary 60-second
  interval the counters may admit the limit plus what was counted in one second. A log of token entries
  would be exact but costs memory per request and a sum per admission; with per-second fields each
  second is subtracted from the total once, when it leaves, so an admission is O(1) amortised, and 1 s
  is finer than any client's retry loop. (Summing all 60 fields on every admission measured ~250 µs of
  Redis time per admission; the whole script now takes ~65 µs, so one Redis admits ~15,000 requests/s.)
- Failed authentications per client address: a sliding log like requests per minute. An attempt that
  must reach the database (a key not in the gateway's cache) or that failed is counted first, and
  given back when the key was valid, so an address that sends made-up keys costs the database at most
  its budget a minute, and is then answered 429 without any database work.
- Monthly token budget: a counter per organisation named after the UTC year-month (`…:2025-06`), which
  expires a day after the month ends, so a new month starts from zero without a reset job.
- Shadow calls of a prompt router (serving/gateway/shadow.py): a counter per router and UTC day (named
  by the day's number since the epoch) caps the tokens they spend a day, and they are counted in their
  organisation's monthly budget, never in a key's or the organisation's per-minute counters, so shadow
  traffic cannot throttle the callers it shadows. A shadow call reserves the most it may use in both
  counters at once, only if both have room (one script), and settles the difference when its usage is
  known (the day's counter only gives back, so no number of processes can take a router past its cap).

All keys expire on their own shortly after their last write. Keys are built inside the script from the
organisation's prefix (the month is only known there), so this needs a single Redis primary; it is not
Redis Cluster safe.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio
import redis.exceptions

WINDOW_SECONDS = 60

REASONS = {
    1: "requests per minute of this API key",
    2: "tokens per minute of this API key",
    3: "requests per minute of the organisation",
    4: "tokens per minute of the organisation",
    5: "monthly token budget of the organisation",
}

# Shared Lua: the clock, integer formatting, the UTC calendar (civil dates from days since the epoch,
# after H. Hinnant's algorithms, because Redis's Lua has no os.date) and the token counters.
_PRELUDE = """
local clock = redis.call('TIME')
local now_s = tonumber(clock[1])
local now_us = now_s * 1000000 + tonumber(clock[2])
local window_s = tonumber(ARGV[1])
local window_us = window_s * 1000000

local function int(x) return string.format('%.0f', x) end

local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                          - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  return era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy - 719468
end

-- The organisation's counter of this UTC month, and the second the next month starts.
local function this_month(prefix)
  local y, m = civil_from_days(math.floor(now_s / 86400))
  local ny, nm = y, m + 1
  if nm == 13 then ny, nm = y + 1, 1 end
  return prefix .. string.format('%04d-%02d', y, m), days_from_civil(ny, nm, 1) * 86400
end

-- A token counter is a hash: <second> -> tokens counted in that second, 'total' (the sum of the seconds
-- still in the window), 'from' (the oldest second that may still hold tokens), 'last' (the newest
-- second written). Seconds up to now - window have left; they are subtracted from the total once each,
-- so reading the total is O(1) amortised. Every write evicts first, so 'from' is never more than about
-- a window behind while the key lives, which bounds the loop.
local function tokens_in_window(key)
  local state = redis.call('HMGET', key, 'from', 'total', 'last')
  if not state[1] then return 0, nil, nil end
  local from, total, last = tonumber(state[1]), tonumber(state[2] or '0'), tonumber(state[3])
  local cutoff = now_s - window_s
  if from <= cutoff then
    for second = from, cutoff do
      local tokens = redis.call('HGET', key, int(second))
      if tokens then
        total = total - tonumber(tokens)
        redis.call('HDEL', key, int(second))
      end
    end
    from = cutoff + 1
    redis.call('HSET', key, 'from', int(from), 'total', int(total))
  end
  return total, from, last
end

-- Count tokens in this second; `total` and `from` are what tokens_in_window just returned.
local function count_tokens(key, tokens, total, from)
  redis.call('HINCRBY', key, clock[1], tokens)
  redis.call('HSET', key, 'total', int(total + tokens), 'last', clock[1], 'from', int(from or now_s))
  redis.call('PEXPIRE', key, window_s * 1000 + 1000)
end
"""

_ADMIT = (
    _PRELUDE
    + """
-- KEYS: requests of the key, requests of the organisation (sorted sets);
--       tokens of the key, tokens of the organisation (token counters, above).
-- ARGV: window seconds, key rpm, key tpm (-1: no limit of its own), org rpm, org tpm,
--       monthly budget, prompt tokens, prefix of the organisation's monthly counter.
local key_rpm, key_tpm = tonumber(ARGV[2]), tonumber(ARGV[3])
local org_rpm, org_tpm = tonumber(ARGV[4]), tonumber(ARGV[5])
local budget, need = tonumber(ARGV[6]), tonumber(ARGV[7])

local function requests_in_window(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', int(now_us - window_us))
  return redis.call('ZCARD', key)
end

-- Until enough entries leave that one more fits: the (count - limit + 1)th oldest must go.
local function request_wait(key, count, limit)
  if limit <= 0 then return window_us end
  local entry = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
  return tonumber(entry[2]) + window_us - now_us
end

local function request_reset(key, admitted)
  if admitted then return window_us end -- this request is the newest
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #newest == 0 then return 0 end
  return tonumber(newest[2]) + window_us - now_us
end

-- Until enough seconds leave that `need` more fits; a request larger than the limit never fits.
-- Walks the window's seconds, so it is only done on refusal.
local function token_wait(key, total, from, limit)
  if need > limit or not from then return window_us end
  local freed = 0
  for second = from, now_s do
    freed = freed + tonumber(redis.call('HGET', key, int(second)) or '0')
    if total - freed + need <= limit then return (second + window_s) * 1000000 - now_us end
  end
  return window_us
end

local function token_reset(total, last)
  if total <= 0 or not last then return 0 end
  return (last + window_s) * 1000000 - now_us
end

local key_requests = requests_in_window(KEYS[1])
local org_requests = requests_in_window(KEYS[2])
local key_tokens, key_from, key_last = tokens_in_window(KEYS[3])
local org_tokens, org_from, org_last = tokens_in_window(KEYS[4])
local month_key, next_month = this_month(ARGV[8])
local month_tokens = tonumber(redis.call('GET', month_key) or '0')

local reason, wait = 0, 0
local function refuse(code, us)
  if us > wait then reason, wait = code, us end
end
if key_rpm >= 0 and key_requests + 1 > key_rpm then
  refuse(1, request_wait(KEYS[1], key_requests, key_rpm))
end
if key_tpm >= 0 and key_tokens + need > key_tpm then
  refuse(2, token_wait(KEYS[3], key_tokens, key_from, key_tpm))
end
if org_requests + 1 > org_rpm then refuse(3, request_wait(KEYS[2], org_requests, org_rpm)) end
if org_tokens + need > org_tpm then refuse(4, token_wait(KEYS[4], org_tokens, org_from, org_tpm)) end
if month_tokens + need > budget then refuse(5, next_month * 1000000 - now_us) end

if reason == 0 then
  redis.call('ZADD', KEYS[1], int(now_us), int(now_us) .. ':' .. key_requests)
  redis.call('ZADD', KEYS[2], int(now_us), int(now_us) .. ':' .. org_requests)
  redis.call('PEXPIRE', KEYS[1], window_s * 1000 + 1000)
  redis.call('PEXPIRE', KEYS[2], window_s * 1000 + 1000)
  key_requests, org_requests = key_requests + 1, org_requests + 1
  if need > 0 then
    count_tokens(KEYS[3], need, key_tokens, key_from)
    count_tokens(KEYS[4], need, org_tokens, org_from)
    key_tokens, org_tokens, key_last, org_last = key_tokens + need, org_tokens + need, now_s, now_s
    redis.call('INCRBY', month_key, need)
    redis.call('EXPIREAT', month_key, next_month + 86400)
  end
end

-- Headers show the binding limit: the one with fewer left (the key's on a tie).
local limit_r, left_r, reset_r = org_rpm, org_rpm - org_requests, request_reset(KEYS[2], reason == 0)
if key_rpm >= 0 and key_rpm - key_requests <= left_r then
  limit_r, left_r, reset_r = key_rpm, key_rpm - key_requests, request_reset(KEYS[1], reason == 0)
end
local limit_t, left_t, reset_t = org_tpm, org_tpm - org_tokens, token_reset(org_tokens, org_last)
if key_tpm >= 0 and key_tpm - key_tokens <= left_t then
  limit_t, left_t, reset_t = key_tpm, key_tpm - key_tokens, token_reset(key_tokens, key_last)
end
return {reason == 0 and 1 or 0, reason, math.ceil(wait / 1000),
        limit_r, math.max(left_r, 0), math.ceil(reset_r / 1000),
        limit_t, math.max(left_t, 0), math.ceil(reset_t / 1000)}
"""
)

_ADD_TOKENS = (
    _PRELUDE
    + """
-- KEYS: tokens of the key, tokens of the organisation. ARGV: window seconds, tokens, monthly prefix.
local tokens = tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  local total, from = tokens_in_window(key)
  count_tokens(key, tokens, total, from)
end
local month_key, next_month = this_month(ARGV[3])
redis.call('INCRBY', month_key, tokens)
redis.call('EXPIREAT', month_key, next_month + 86400)
return 1
"""
)

_GIVE_BACK_TOKENS = (
    _PRELUDE
    + """
-- KEYS: tokens of the key, tokens of the organisation. ARGV: window seconds, tokens, monthly prefix.
-- Takes the tokens out of the newest seconds still in the window (where the call's admission was
-- counted, unless it lasted past the window), so 'total' stays the sum of the seconds and never goes
-- below zero; then out of this month's counter, which stops at zero.
local tokens = tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  local total, from, last = tokens_in_window(key)
  local left = math.min(tokens, total)
  if last and left > 0 then
    for second = last, from, -1 do
      local field = int(second)
      local held = tonumber(redis.call('HGET', key, field) or '0')
      local taken = math.min(held, left)
      if taken > 0 then
        redis.call('HINCRBY', key, field, -taken)
        left = left - taken
        total = total - taken
      end
      if left <= 0 then break end
    end
    redis.call('HSET', key, 'total', int(total))
  end
end
local month_key = this_month(ARGV[3])
local month = tonumber(redis.call('GET', month_key) or '0')
if month > 0 then
  redis.call('DECRBY', month_key, math.min(month, tokens))
end
return 1
"""
)


_FAILED_AUTHENTICATION = (
    _PRELUDE
    + """
-- KEYS: failed authentications of one client address (a sorted set, like requests per minute).
-- ARGV: window seconds, limit. Counts one attempt when there is room.
-- Returns {1, the entry counted} with room, {0, ms until there is room} without.
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now_us - window_us))
local failures = redis.call('ZCARD', KEYS[1])
if failures >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], failures - limit, failures - limit, 'WITHSCORES')
  return {0, math.ceil((tonumber(oldest[2]) + window_us - now_us) / 1000)}
end
local entry = int(now_us) .. ':' .. failures
redis.call('ZADD', KEYS[1], int(now_us), entry)
redis.call('PEXPIRE', KEYS[1], window_s * 1000 + 1000)
return {1, entry}
"""
)


_RESERVE_SHADOW_TOKENS = (
    _PRELUDE
    + """
-- KEYS: none. ARGV: window seconds (unused), tokens, tokens a day, monthly budget, day counter prefix,
-- monthly prefix. Counts `tokens` in the router's counter of this UTC day and in the organisation's
-- monthly counter when both stay within their caps; returns 1 then, else 0 (nothing counted).
local tokens, per_day, budget = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local day = math.floor(now_s / 86400)
local day_key = ARGV[5] .. int(day)
local month_key, next_month = this_month(ARGV[6])
local spent_today = tonumber(redis.call('GET', day_key) or '0')
local spent_month = tonumber(redis.call('GET', month_key) or '0')
if spent_today + tokens > per_day or spent_month + tokens > budget then return 0 end
redis.call('INCRBY', day_key, tokens)
redis.call('EXPIREAT', day_key, (day + 2) * 86400)
redis.call('INCRBY', month_key, tokens)
redis.call('EXPIREAT', month_key, next_month + 86400)
return 1
"""
)

_SETTLE_SHADOW_TOKENS = (
    _PRELUDE
    + """
-- KEYS: none. ARGV: window seconds (unused), tokens (negative: given back), day counter prefix, monthly
-- prefix, 1 when the day's counter only gives back. Adds `tokens` to the router's counter of this UTC
-- day (unless it only gives back and `tokens` is positive) and the organisation's monthly counter;
-- neither goes below zero.
local tokens = tonumber(ARGV[2])
local day = math.floor(now_s / 86400)
local month_key, next_month = this_month(ARGV[4])
local keys = {month_key}
if tokens < 0 or ARGV[5] ~= '1' then table.insert(keys, ARGV[3] .. int(day)) end
for _, key in ipairs(keys) do
  local value = redis.call('INCRBY', key, tokens)
  if value < 0 then redis.call('SET', key, 0) end
end
redis.call('EXPIREAT', ARGV[3] .. int(day), (day + 2) * 86400)
redis.call('EXPIREAT', month_key, next_month + 86400)
return 1
"""
)


class _Script:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1


ADMIT_SCRIPT = _Script(_ADMIT)
ADD_TOKENS_SCRIPT = _Script(_ADD_TOKENS)
GIVE_BACK_TOKENS_SCRIPT = _Script(_GIVE_BACK_TOKENS)
FAILED_AUTHENTICATION_SCRIPT = _Script(_FAILED_AUTHENTICATION)
RESERVE_SHADOW_TOKENS_SCRIPT = _Script(_RESERVE_SHADOW_TOKENS)
SETTLE_SHADOW_TOKENS_SCRIPT = _Script(_SETTLE_SHADOW_TOKENS)


@dataclass(frozen=True)
class Limits:
    """What a caller may use. `key_*` None means the key has no limit of its own (the organisation's
    still apply)."""

    key_rpm: int | None
    key_tpm: int | None
    org_rpm: int
    org_tpm: int
    org_monthly_tokens: int


def format_duration(milliseconds: int) -> str:
    """A duration as OpenAI writes it in `x-ratelimit-reset-*`: "12ms", "12s", "1m2s", "1h0m0s".

    At or above a second it is rounded up, so a client that waits that long is never too early."""
    if milliseconds <= 0:
        return "0s"
    if milliseconds < 1000:
        return f"{milliseconds}ms"
    hours, rest = divmod(math.ceil(milliseconds / 1000), 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


@dataclass(frozen=True)
class Decision:
    """The answer to one admission and what the caller has left.

    The request and token figures are those of the binding per-minute limit (key or organisation,
    whichever has fewer left), as OpenAI reports them; the monthly budget shows only in `reason` and
    `retry_after_seconds` when it refuses. `reset_*_ms` is the time until that window is empty again.
    """

    allowed: bool
    reason: str  # which limit refused, in words; "" when allowed
    retry_after_seconds: int  # 0 when allowed
    limit_requests: int
    remaining_requests: int
    reset_requests_ms: int
    limit_tokens: int
    remaining_tokens: int
    reset_tokens_ms: int

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.limit_requests),
            "x-ratelimit-remaining-requests": str(self.remaining_requests),
            "x-ratelimit-reset-requests": format_duration(self.reset_requests_ms),
            "x-ratelimit-limit-tokens": str(self.limit_tokens),
            "x-ratelimit-remaining-tokens": str(self.remaining_tokens),
            "x-ratelimit-reset-tokens": format_duration(self.reset_tokens_ms),
        }


class RateLimiter:
    """Admits requests against an API key's and its organisation's limits; see the module docstring.

    The admission script, in order, all inside one atomic EVALSHA:
      1. Read the clock (Redis TIME, microseconds).
      2. Drop request entries older than the window from the key's and the organisation's sorted sets
         and count what is left; subtract the token seconds that have left the window from each
         token counter's running total (each second once), deleting them.
      3. Read the organisation's counter of the current UTC month.
      4. Check all five limits against "what is in the window + this request" (1 request, the prompt
         tokens). For each that fails, work out when enough leaves the window for this request to fit;
         the refusal names the limit with the longest wait, which is the Retry-After.
      5. Only if all pass, count the request in both sorted sets and the prompt tokens in both token
         hashes and the monthly counter, and push every key's expiry forward.
      6. Return the decision with the binding limit's figures for the headers.
    Because nothing is counted on refusal, a refused caller's retries do not extend its own wait.
    """

    def __init__(
        self, connection: redis.asyncio.Redis, prefix: str = "gw:", *, window_seconds: int = WINDOW_SECONDS
    ) -> None:
        # window_seconds exists so tests can watch a window slide; production keeps the minute.
        self.redis = connection
        self.prefix = prefix
        self.window_seconds = window_seconds

    def _keys(self, key_id: int | None, org_id: int) -> tuple[list[str], str]:
        p = self.prefix
        # A call without a key (the web playground) has no key limits; its organisation's own "key"
        # counters take the script's writes, so no counter is shared between organisations.
        key = f"person-{org_id}" if key_id is None else key_id
        counters = [f"{p}rpm:key:{key}", f"{p}rpm:org:{org_id}"]
        counters += [f"{p}tpm:key:{key}", f"{p}tpm:org:{org_id}"]
        return counters, f"{p}month:org:{org_id}:"

    async def admit(self, *, key_id: int | None, org_id: int, limits: Limits, prompt_tokens: int) -> Decision:
        """Check every limit and, only if all pass, count the request and its prompt tokens against all
        of them. One round trip."""
        counters, month_prefix = self._keys(key_id, org_id)
        args: list[int | str] = [
            self.window_seconds,
            -1 if limits.key_rpm is None else limits.key_rpm,
            -1 if limits.key_tpm is None else limits.key_tpm,
            limits.org_rpm,
            limits.org_tpm,
            limits.org_monthly_tokens,
            max(0, prompt_tokens),
            month_prefix,
        ]
        result = await self._run(ADMIT_SCRIPT, counters, args)
        allowed, reason, wait_ms, *figures = (int(value) for value in result)
        return Decision(
            allowed=bool(allowed),
            reason=REASONS.get(reason, ""),
            retry_after_seconds=0 if allowed else max(1, math.ceil(wait_ms / 1000)),
            limit_requests=figures[0],
            remaining_requests=figures[1],
            reset_requests_ms=figures[2],
            limit_tokens=figures[3],
            remaining_tokens=figures[4],
            reset_tokens_ms=figures[5],
        )

    async def add_tokens(self, *, key_id: int | None, org_id: int, tokens: int) -> None:
        """Count tokens learnt after admission (completion tokens, a larger real prompt) against the
        key's and organisation's per-minute counters and the monthly budget. One round trip; nothing to do
        for zero or fewer tokens (an over-estimate is not refunded). May take a counter over its limit,
        which then refuses the next admissions until the window has room again."""
        if tokens <= 0:
            return
        counters, month_prefix = self._keys(key_id, org_id)
        await self._run(ADD_TOKENS_SCRIPT, counters[2:], [self.window_seconds, tokens, month_prefix])

    async def give_back_tokens(self, *, key_id: int | None, org_id: int, tokens: int) -> None:
        """Uncount tokens counted at admission for a call that turned out to cost nothing (the engine
        refused it): out of the key's and organisation's per-minute counters (their newest seconds, never
        below zero) and this month's budget (never below zero). One round trip; nothing to do for zero
        or fewer tokens."""
        if tokens <= 0:
            return
        counters, month_prefix = self._keys(key_id, org_id)
        await self._run(GIVE_BACK_TOKENS_SCRIPT, counters[2:], [self.window_seconds, tokens, month_prefix])

    async def take_authentication_attempt(self, address: str, limit: int) -> tuple[str, int]:
        """Count one attempt to authenticate from `address` against its failed-authentication budget
        (`limit` a window), if it has room: ("the entry counted", 0); without room nothing is counted and
        the answer is ("", milliseconds until there is room). An attempt that succeeds is given back with
        `give_back_authentication_attempt`, so only failures stay counted. One round trip."""
        allowed, value = await self._run(
            FAILED_AUTHENTICATION_SCRIPT, [self._address_key(address)], [self.window_seconds, limit]
        )
        if int(allowed):
            return (value.decode() if isinstance(value, bytes) else str(value)), 0
        return "", max(1, int(value))

    async def give_back_authentication_attempt(self, address: str, entry: str) -> None:
        """Forget an attempt that turned out to be a valid key's."""
        await cast(Awaitable[Any], self.redis.zrem(self._address_key(address), entry))

    async def reserve_shadow_tokens(
        self, *, router_id: int, org_id: int, tokens: int, per_day: int, monthly_budget: int
    ) -> bool:
        """Count a shadow call's estimated tokens in its router's counter of the day and its
        organisation's monthly budget, if both have room; False (nothing counted) otherwise."""
        args: list[int | str] = [
            self.window_seconds, max(0, tokens), per_day, monthly_budget,
            self._shadow_prefix(router_id), f"{self.prefix}month:org:{org_id}:",
        ]  # fmt: skip
        return bool(int(await self._run(RESERVE_SHADOW_TOKENS_SCRIPT, [], args)))

    async def settle_shadow_tokens(
        self, *, router_id: int, org_id: int, tokens: int, day_gives_back_only: bool = False
    ) -> None:
        """Correct a shadow call's reservation by `tokens` (what it really used minus the estimate). With
        `day_gives_back_only`, a positive correction reaches the monthly budget but not the router's
        day, whose cap the reservation alone then holds."""
        if tokens == 0:
            return
        args: list[int | str] = [
            self.window_seconds,
            tokens,
            self._shadow_prefix(router_id),
            f"{self.prefix}month:org:{org_id}:",
            1 if day_gives_back_only else 0,
        ]
        await self._run(SETTLE_SHADOW_TOKENS_SCRIPT, [], args)

    async def shadow_tokens_today(self, router_id: int) -> int:
        """Tokens the router's shadow calls have counted this UTC day (by Redis' clock)."""
        seconds, _ = await cast(Awaitable[Any], self.redis.time())
        value = await cast(
            Awaitable[Any], self.redis.get(f"{self._shadow_prefix(router_id)}{int(seconds) // 86400}")
        )
        return int(value or 0)

    def _shadow_prefix(self, router_id: int) -> str:
        return f"{self.prefix}shadow:router:{router_id}:day:"

    def _address_key(self, address: str) -> str:
        return f"{self.prefix}authfail:{address}"

    async def _run(self, script: _Script, keys: Sequence[str], args: Sequence[int | str]) -> Any:
        """EVALSHA, so the script body crosses the network only when Redis has not seen it (after a
        restart or SCRIPT FLUSH): then EVAL, which also caches it for the next EVALSHA."""
        try:
            return await cast(Awaitable[Any], self.redis.evalsha(script.sha, len(keys), *keys, *args))
        except redis.exceptions.NoScriptError:
            return await cast(Awaitable[Any], self.redis.eval(script.source, len(keys), *keys, *args))
