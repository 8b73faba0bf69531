"""Rate limits in Redis: one budget for every process, refusals say how long to wait."""

from __future__ import annotations

import asyncio

import pytest

from services.runtime import Stores
from shared.ratelimit import Rate, RateLimiter
from shared.settings import Settings
from shared.stores import open_redis


@pytest.mark.parametrize(("text", "count", "per"), [
    ("100/s", 100, 1.0), ("10/m", 10, 60.0), ("5/2s", 5, 2.0), (" 7 / h ", 7, 3600.0)])
def test_rates_parse(text: str, count: int, per: float) -> None:
    assert Rate.parse(text) == Rate(count, per)


@pytest.mark.parametrize("text", ["", "0/s", "10", "10/d", "-1/s", "1.5/s", "5/0s", "x/s"])
def test_bad_rates_are_refused_with_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError, match="COUNT/PERIOD"):
        Rate.parse(text)


def limiter(stores: Stores) -> RateLimiter:
    return RateLimiter(stores.redis, stores.queue.keys.prefix)


async def test_a_burst_of_one_period_passes_then_the_next_waits(stores: Stores) -> None:
    rate = Rate(10, 60.0)  # 10 per minute: one unit every 6 s
    waits = [await limiter(stores).take("k", rate) for _ in range(11)]
    assert waits[:10] == [0.0] * 10
    assert 5.0 < waits[10] <= 6.0


async def test_a_refusal_takes_nothing(stores: Stores) -> None:
    rate = Rate(5, 60.0)
    assert await limiter(stores).take("k", rate, cost=4) == 0.0
    assert await limiter(stores).take("k", rate, cost=3) > 0  # refused: 7 > 5
    assert await limiter(stores).take("k", rate, cost=1) == 0.0  # the 5th still fits


async def test_a_request_bigger_than_the_burst_fits_only_an_empty_limiter(
        stores: Stores) -> None:
    rate = Rate(5, 60.0)
    assert await limiter(stores).take("k", rate, cost=20) == 0.0
    wait = await limiter(stores).take("k", rate, cost=1)
    assert 60 * 15 / 5 - 1 < wait <= 60 * 15 / 5 + 12  # 15 units over the burst, 12 s each


async def test_limiters_are_independent_by_name(stores: Stores) -> None:
    rate = Rate(1, 60.0)
    assert await limiter(stores).take("a", rate) == 0.0
    assert await limiter(stores).take("b", rate) == 0.0
    assert await limiter(stores).take("a", rate) > 0


async def test_several_clients_share_one_budget(stores: Stores, settings: Settings) -> None:
    """Four clients (four processes, say) taking at once: exactly the burst passes."""
    rate = Rate(50, 60.0)

    async def client() -> list[float]:
        async with open_redis(settings) as redis:
            taker = RateLimiter(redis, stores.queue.keys.prefix)
            return [await taker.take("shared", rate) for _ in range(50)]

    results = [w for waits in await asyncio.gather(*[client() for _ in range(4)])
               for w in waits]
    assert sum(1 for w in results if w == 0.0) == 50


async def test_the_budget_refills_with_time(stores: Stores) -> None:
    rate = Rate(20, 1.0)  # one unit every 50 ms
    for _ in range(1000):  # empty it (a slow machine refills it a little meanwhile)
        wait = await limiter(stores).take("k", rate)
        if wait:
            break
    assert 0 < wait <= 0.05
    await asyncio.sleep(wait)
    assert await limiter(stores).take("k", rate) == 0.0
