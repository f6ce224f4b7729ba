"""The local executor's process handling, with a stand-in trainer program (the real trainer runs in the
end-to-end tests): exit codes, crashes, kills, stopping, and re-attaching after an operator restart."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.training.operator.conditions import TRAINER_EXIT_REPORTED_FAILURE, JobObservation, JobPhase
from services.training.operator.executor import OwnedJob
from services.training.operator.local_executor import LocalExecutor

# Behaves as told by its first argument; `train --run <id>` follows, as for the real CLI.
STAND_IN = """
import os, signal, sys, time
mode = sys.argv[1]
if mode == "sleep":
    time.sleep(60)
elif mode == "crash":
    print("Traceback (most recent call last):\\nRuntimeError: CUDA error: device-side assert", flush=True)
    sys.exit(1)
elif mode == "oom":
    os.kill(os.getpid(), signal.SIGKILL)
else:
    sys.exit(int(mode))
"""


def executor_for(tmp_path: Path, mode: str, owner: str = "db-a") -> LocalExecutor:
    return LocalExecutor(
        command=[sys.executable, "-c", STAND_IN, mode], log_dir=tmp_path / "logs", owner=owner
    )


def settled(executor: LocalExecutor, handle: str, run_id: int) -> JobObservation:
    deadline = time.monotonic() + 30
    while (observation := executor.observe(handle, run_id=run_id)).phase == JobPhase.RUNNING:
        assert time.monotonic() < deadline, "the stand-in trainer never ended"
        time.sleep(0.05)
    return observation


@pytest.fixture
def cleanup() -> Iterator[list[tuple[LocalExecutor, str, int]]]:
    started: list[tuple[LocalExecutor, str, int]] = []
    yield started
    for executor, handle, run_id in started:
        executor.stop(handle, run_id=run_id)


def test_a_trainer_that_reported_its_result_succeeded(tmp_path: Path):
    executor = executor_for(tmp_path, "0")
    handle = executor.launch(run_id=1, org_id=1)
    assert settled(executor, handle, 1).phase == JobPhase.SUCCEEDED


def test_a_trainer_that_failed_the_run_itself_is_told_apart(tmp_path: Path):
    executor = executor_for(tmp_path, str(TRAINER_EXIT_REPORTED_FAILURE))
    handle = executor.launch(run_id=1, org_id=1)
    observation = settled(executor, handle, 1)
    assert (observation.phase, observation.reason) == (JobPhase.FAILED, "TrainerReportedFailure")


def test_a_crash_reports_the_last_output_and_the_log(tmp_path: Path):
    executor = executor_for(tmp_path, "crash")
    handle = executor.launch(run_id=7, org_id=1)

    observation = settled(executor, handle, 7)

    assert (observation.phase, observation.reason) == (JobPhase.FAILED, "TrainerCrashed")
    assert "exit code 1" in observation.message
    assert "CUDA error: device-side assert" in observation.message
    assert str(tmp_path / "logs" / "run-7.log") in observation.message


def test_a_killed_trainer_mentions_memory(tmp_path: Path):
    executor = executor_for(tmp_path, "oom")
    handle = executor.launch(run_id=1, org_id=1)

    observation = settled(executor, handle, 1)

    assert (observation.phase, observation.reason) == (JobPhase.FAILED, "TrainerKilled")
    assert "SIGKILL" in observation.message and "batch_size" in observation.message


def test_stopping_ends_the_trainer(tmp_path: Path):
    executor = executor_for(tmp_path, "sleep")
    handle = executor.launch(run_id=1, org_id=1)
    assert executor.observe(handle, run_id=1).phase == JobPhase.RUNNING

    executor.stop(handle, run_id=1)
    executor.stop(handle, run_id=1)

    assert executor.owned() == []
    assert executor.observe(handle, run_id=1).phase == JobPhase.MISSING


def test_a_restarted_operator_reattaches_instead_of_starting_again(tmp_path: Path, cleanup):
    first = executor_for(tmp_path, "sleep")
    handle = first.launch(run_id=4, org_id=1)
    cleanup.append((first, handle, 4))

    restarted = executor_for(tmp_path, "sleep")

    assert restarted.owned() == [OwnedJob(handle=handle, run_id=4)]
    assert restarted.observe(handle, run_id=4).phase == JobPhase.RUNNING
    assert restarted.launch(run_id=4, org_id=1) == handle
    assert len(restarted.owned()) == 1

    restarted.stop(handle, run_id=4)
    settled(first, handle, 4)  # the first operator's process reaps its child, as it would have

    observation = restarted.observe(handle, run_id=4)
    assert (observation.phase, observation.reason) == (JobPhase.MISSING, "ProcessGone")


def test_another_installations_trainers_are_not_ours(tmp_path: Path, cleanup):
    theirs = executor_for(tmp_path, "sleep", owner="db-b")
    handle = theirs.launch(run_id=4, org_id=1)
    cleanup.append((theirs, handle, 4))

    ours = executor_for(tmp_path, "sleep", owner="db-a")

    assert ours.owned() == []
    assert ours.observe(handle, run_id=4).phase == JobPhase.MISSING
    ours.stop(handle, run_id=4)
    assert theirs.observe(handle, run_id=4).phase == JobPhase.RUNNING
