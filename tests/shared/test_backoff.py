import random

import pytest

from shared.backoff import next_delay


def test_delays_stay_under_an_exponential_ceiling_capped() -> None:
    rng = random.Random(7)
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 60.0), (80, 60.0)):
        draws = [next_delay(attempt, 1.0, 60.0, rng) for _ in range(500)]
        assert all(0 <= d <= ceiling for d in draws)
        assert max(draws) > ceiling * 0.9  # full jitter spans the whole range
        assert min(draws) < ceiling * 0.1


def test_same_seed_same_delays() -> None:
    assert ([next_delay(3, 0.5, 10, random.Random(1)) for _ in range(3)]
            == [next_delay(3, 0.5, 10, random.Random(1)) for _ in range(3)])


def test_attempt_counts_from_one() -> None:
    with pytest.raises(ValueError):
        next_delay(0, 1, 10)
