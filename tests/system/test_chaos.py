"""Churn in CI: replicas SIGKILLed and restarted under load, then scaled to one by SIGTERM.

The short version of bench/chaos.py (same runner): 3 real ``python -m service run`` processes on
one group, 600 requests whose verdicts are known, a 30 TPS quota with 3 % InternalServerError,
three SIGKILL + restarts 2.5-4.5 s apart, then SIGTERM down to one. Nothing may be lost or
routed wrongly, every SIGTERM must end its process within the grace period, and no interval
without a new outcome may outlast the group-stall threshold plus one rebalance. Duplicates are
allowed (at-least-once) and printed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import HEADER, Scenario, run_scenario
from tests.fakes.rekognition import FakeRekognition

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(180)]

SCENARIO = Scenario(
    replicas=3,
    requests=600,
    quota=30.0,
    kills=3,
    grace_s=5.0,
    session_timeout_ms=6000,
    rebalance_stall_s=15.0,
    give_up_s=45.0,
)


async def test_churn_loses_nothing_and_never_stalls(
    kafka_bootstrap: str, fake_rekognition: FakeRekognition, tmp_path: Path
) -> None:
    result = await run_scenario(
        SCENARIO,
        bootstrap=kafka_bootstrap,
        fake_url=fake_rekognition.endpoint_url,
        logdir=tmp_path,
        seed=12,
    )
    print(f"\n{HEADER}\n{result.row()}\n{result.duplicates} duplicates (at-least-once)")
    where = f"replica logs under {tmp_path}"
    assert result.lost == 0, f"{result.lost} lost, e.g. {result.lost_examples}; {where}"
    assert result.wrong == 0, f"{result.wrong} wrong, e.g. {result.wrong_examples}; {where}"
    assert result.sigterms_within_grace, f"{result.sigterms}; {where}"
    assert result.longest_stall_s <= SCENARIO.allowed_stall_s, (
        f"no new outcome for {result.longest_stall_s:.1f} s "
        f"(allowed {SCENARIO.allowed_stall_s:.0f} s); {where}"
    )
