"""A short seeded fault-injection soak: nothing lost, hung, run twice or leaked.

``nox -s soak`` runs the long version and compares the stdlib and loky on the
same workload (benchmarks/RELIABILITY.md). To replay a failure, set
STALWART_SOAK_SEED to the seed in its message.
"""

from __future__ import annotations

import os

import pytest

from tests import _soak


@pytest.fixture(scope="module", autouse=True)
def _process_wide_helpers_started() -> None:
    _soak.warm_up(_soak.stalwart_executor)


SEED = int(os.environ.get("STALWART_SOAK_SEED", "20261123"))
TASKS_PER_ROUND = 400


@pytest.mark.timeout(150)
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds in /proc")
@pytest.mark.parametrize(
    "round_number", [0, 1, 2], ids=["plain", "retries", "shutdown"]
)
def test_every_future_gets_exactly_its_expected_outcome(round_number: int) -> None:
    plan = _soak.plan_round(SEED, round_number, TASKS_PER_ROUND)
    report = _soak.run_round(
        "stalwart", _soak.stalwart_executor, plan, strict=True, deadline_s=60
    )
    replay = f"(seed {plan.seed}; replay with STALWART_SOAK_SEED={SEED})"
    assert report.wrong == [], f"wrong outcomes {replay}:\n" + "\n".join(report.wrong)
    assert report.correct == report.planned
    assert report.hung == 0
    assert report.ran_twice == 0
    assert report.leaked_processes == 0
    assert report.fds_after <= report.fds_before, f"fds leaked {replay}"
    # The round really injected faults; with this seed every kind fired.
    assert set(report.faults) >= set(_soak.CRASHES) | {"timeout", "raise"}
