"""The long chaos run, on demand (not part of the test suite):

    python -m tests.benchmarks.chaos [--seeds 20] [--first-seed 1] [--jobs 600]
                                     [--faults 30] [--workers 3] [--keep]

Runs tests/chaos.py's seeded run for N seeds in a row (each with its own embedded Redis
and MongoDB, processes and receiver), with more jobs and more faults than the suite's
test, and prints each seed's figures (accepted jobs, statuses, executions distribution,
webhooks, lost replies, fault schedule, timings) and any violated invariant. Exits 1 if
any seed violated one; rerun a failing seed alone with ``--first-seed S --seeds 1``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.chaos import ChaosPlan, ChaosResult, run_seed


async def main(args: argparse.Namespace) -> int:
    failed: list[int] = []
    executions: Counter[int] = Counter()
    started = time.monotonic()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        base = Path(tempfile.mkdtemp(prefix=f"chaos-{seed}-"))
        plan = ChaosPlan(seed=seed, jobs=args.jobs, faults=args.faults, workers=args.workers,
                         window=args.window)
        try:
            result: ChaosResult = await run_seed(plan, base)
        except Exception as exc:  # report the seed and go on with the next
            print(f"seed {seed}: the run itself failed: {exc!r} (files in {base})",
                  flush=True)
            failed.append(seed)
            continue
        print(result.summary(), flush=True)
        executions += result.executions
        if result.violations or result.exits:
            failed.append(seed)
            print(f"seed {seed}: FAILED (files kept in {base})", flush=True)
        elif not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        print(flush=True)
    took = time.monotonic() - started
    print(f"{args.seeds} seeds in {took:.0f}s ({took / args.seeds:.0f}s each); "
          f"executions over all seeds {dict(sorted(executions.items()))}; "
          f"failed seeds: {failed or 'none'}")
    return 1 if failed else 0


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--faults", type=int, default=30)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--window", type=int, default=80)
    parser.add_argument("--keep", action="store_true", help="keep every run's files")
    raise SystemExit(asyncio.run(main(parser.parse_args())))


if __name__ == "__main__":
    cli()
