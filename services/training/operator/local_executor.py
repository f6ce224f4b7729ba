"""The local executor: the trainer as a subprocess on this machine, its output in a log file per run.

A trainer starts in its own session, so stopping (or crashing) the operator leaves it training. Like the
Kubernetes executor, this one keeps nothing it cannot find again: every trainer carries an owner token in its
environment (which database its run lives in), so a restarted operator finds its trainers by looking at the
machine's processes, and launching a run whose trainer is already alive adopts that trainer.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import psutil

from arbiter.config.typed_settings import arbiter_settings
from services.training.operator.conditions import TRAINER_EXIT_REPORTED_FAILURE, JobObservation, JobPhase
from services.training.operator.executor import LaunchError, OwnedJob

OWNER_ENV = "ARBITER_TRAINER_OWNER"
LOG_TAIL_CHARS = 600


class LocalExecutor:
    name = "local"

    def __init__(self, *, command: Sequence[str], log_dir: Path, owner: str) -> None:
        """`command` starts the `arbiter` CLI (e.g. `["arbiter"]`); `train --run <id>` is appended.

        `owner` names the runs' database: trainers of another installation on this machine are not ours.
        """
        self._command = list(command)
        self._log_dir = log_dir
        self._owner = owner
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def log_path(self, run_id: int) -> Path:
        return self._log_dir / f"run-{run_id}.log"

    def launch(self, *, run_id: int, org_id: int) -> str:
        for job in self.owned():
            if job.run_id == run_id:
                return job.handle
        self._log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path(run_id).open("ab") as log:
            try:
                child = subprocess.Popen(
                    [*self._command, "train", "--run", str(run_id)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # ARBITER_HOME made absolute: the trainer works in another directory.
                    env={**os.environ, OWNER_ENV: self._owner, "ARBITER_HOME": str(arbiter_settings().core.home)},
                    # Libraries that drop scratch files in the working directory (ONNX tooling does) leave
                    # them beside the logs, not wherever the operator was started.
                    cwd=self._log_dir,
                    start_new_session=True,
                )
            except OSError as error:
                raise LaunchError(
                    f"The trainer could not be started ({' '.join(self._command)}): {error}"
                ) from error
        self._children[child.pid] = child
        return str(child.pid)

    def observe(self, handle: str, *, run_id: int) -> JobObservation:
        pid = int(handle)
        trainer = f"The trainer (process {pid})"
        child = self._children.get(pid)
        if child is None:
            # Started by an earlier operator: not our child, so there is no exit code to read.
            if self._trainer_run_id(pid) == run_id:
                return JobObservation(JobPhase.RUNNING, "ProcessRunning", f"{trainer} is running.")
            return JobObservation(
                JobPhase.MISSING,
                "ProcessGone",
                f"{trainer} ended while no operator was watching it. {self._log_tail(run_id)}",
            )
        code = child.poll()
        if code is None:
            return JobObservation(JobPhase.RUNNING, "ProcessRunning", f"{trainer} is running.")
        del self._children[pid]
        if code == 0:
            return JobObservation(JobPhase.SUCCEEDED, "ProcessExited", f"{trainer} finished.")
        if code == TRAINER_EXIT_REPORTED_FAILURE:
            return JobObservation(
                JobPhase.FAILED, "TrainerReportedFailure", f"{trainer} ended the run failed."
            )
        if code < 0:
            hint = (
                " The kernel's out-of-memory killer sends SIGKILL: if memory ran short, lower batch_size or "
                "max_tokens."
                if -code == signal.SIGKILL
                else ""
            )
            return JobObservation(
                JobPhase.FAILED,
                "TrainerKilled",
                f"{trainer} was killed by {signal.Signals(-code).name}.{hint}",
            )
        return JobObservation(
            JobPhase.FAILED,
            "TrainerCrashed",
            f"{trainer} crashed (exit code {code}). {self._log_tail(run_id)}",
        )

    def stop(self, handle: str, *, run_id: int) -> None:
        """Terminate the trainer and what it started; a trainer already gone is what we wanted."""
        pid = int(handle)
        child = self._children.pop(pid, None)
        if child is not None or self._trainer_run_id(pid) == run_id:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
        if child is not None:
            child.wait()

    def owned(self) -> list[OwnedJob]:
        """The live trainers of this installation, found among the machine's processes."""
        owned = []
        for process in psutil.process_iter():
            run_id = self._trainer_run_id(process.pid)
            if run_id is not None:
                owned.append(OwnedJob(handle=str(process.pid), run_id=run_id))
        return owned

    def _trainer_run_id(self, pid: int) -> int | None:
        """The run a live trainer of ours is training, else None (process ids get reused)."""
        try:
            process = psutil.Process(pid)
            cmdline = process.cmdline()
            run_id = next(
                (
                    int(cmdline[i + 2])
                    for i in range(len(cmdline) - 2)
                    if cmdline[i : i + 2] == ["train", "--run"] and cmdline[i + 2].isdigit()
                ),
                None,
            )
            if run_id is None or process.status() == psutil.STATUS_ZOMBIE:
                return None
            # The trainer leads its own session; the workers it forks share its command line but not that.
            if os.getpgid(pid) != pid or process.environ().get(OWNER_ENV) != self._owner:
                return None
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ProcessLookupError):
            return None
        return run_id

    def _log_tail(self, run_id: int) -> str:
        path = self.log_path(run_id)
        try:
            text = path.read_text(errors="replace").strip()
        except FileNotFoundError:
            return f"It left no log at {path}."
        return (
            f"Last output: {text[-LOG_TAIL_CHARS:]} (full log: {path})"
            if text
            else f"Its log {path} is empty."
        )
