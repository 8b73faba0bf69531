"""Chaos: processes SIGKILLed, Redis restarted empty, MongoDB stopped and restarted,
replies lost and connections reset, all while jobs are submitted; then everything is
healed and nothing accepted may be lost, finish twice, run unboundedly often or miss a
webhook. The fault schedule is seeded: ``CHAOS_SEEDS=1,2,3`` runs those seeds (default:
one fixed seed, or ``CHAOS_SEED``). See tests/chaos.py for the driver and invariants."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos import ChaosPlan, run_seed

DEFAULT_SEED = 20240601


def seeds() -> list[int]:
    listed = os.environ.get("CHAOS_SEEDS") or os.environ.get("CHAOS_SEED")
    return [int(s) for s in listed.split(",") if s.strip()] if listed else [DEFAULT_SEED]


@pytest.mark.parametrize("seed", seeds())
async def test_chaos_loses_nothing_and_finishes_each_job_once(seed: int,
                                                              tmp_path: Path) -> None:
    result = await run_seed(ChaosPlan(seed=seed, jobs=300), tmp_path)
    print(result.summary())
    assert not result.violations, result.summary()
    assert not result.exits, result.summary()  # no process died of the faults by itself
    assert len(result.faults) == ChaosPlan(seed).faults
    assert result.statuses == {"COMPLETED": len(result.submissions.accepted)}
