"""Where a study lives: a journal file in the sweep folder (default), or a database URL.

Why a journal file and not SQLite: several worker processes writing one SQLite file end
in "database is locked" under load (Optuna's docs advise against it). Optuna's journal
storage appends one line per operation under a file lock, and every process replays the
log, so N local workers share one study with no server.

Killed workers: Optuna's RDB storage records heartbeats itself; its journal storage does
not, so `HeartbeatJournalStorage` adds them (a heartbeat is a trial system attribute) and
also fails at once a trial whose worker ran on this host and is gone. Either way a stale
trial is failed and `RetryHeartbeatStaleTrialCallback` queues a copy that resumes the
same run folder from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import time
import warnings
from pathlib import Path

import optuna
from optuna.exceptions import StorageInternalError
from optuna.storages import (
    BaseStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
)

# Private, and the one way to give a storage heartbeats: fail_stale_trials() asks for this
# interface. Its methods (and _get_stale_trial_ids) are what the Optuna pin in
# pyproject.toml is tested against.
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from cnnlab.errors import CnnlabError

JOURNAL_FILE = "study.journal"
HEARTBEAT_ATTR = "cnnlab:heartbeat"  # unix time of the worker's last sign of life
WORKER_ATTR = "worker"  # "host:pid" of the process running the trial
ATTEMPT_ATTRS = (WORKER_ATTR, "outcome", "fail_reason")  # belong to one attempt
MAX_RETRY = 3  # a trial whose worker dies this many times is left failed


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry, minus the failed attempt's worker id and outcome: the copy must not
    look stale itself, nor inherit a reason that was not its own."""

    def __init__(self) -> None:
        super().__init__(max_retry=MAX_RETRY, inherit_intermediate_values=True)

    def __call__(self, study, trial) -> None:
        trial = copy.deepcopy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ATTEMPT_ATTRS}
        super().__call__(study, trial)


def _gone_here(worker: str | None) -> bool:
    """True when `worker` ran on this host and its process no longer exists."""
    if not worker or ":" not in worker:
        return False
    host, pid = worker.rsplit(":", 1)
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal file storage plus the heartbeat interface of its RDB storage."""

    def __init__(self, path: Path, interval: int, grace: int):
        super().__init__(JournalFileBackend(str(path)))
        self._interval, self._grace = interval, grace
        self._callback = RetryStaleTrial()

    def record_heartbeat(self, trial_id: int) -> None:
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # ended meanwhile
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now, stale = time.time(), []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            start = t.datetime_start.timestamp() if t.datetime_start else now
            beat = t.system_attrs.get(HEARTBEAT_ATTR, start)
            if now - beat > self._grace or _gone_here(t.user_attrs.get(WORKER_ATTR)):
                stale.append(self.get_trial_id_from_study_id_trial_number(study_id, t.number))
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._interval

    def get_heartbeat_stale_trial_callback(self):
        return self._callback


def open_storage(url: str | None, folder: Path, heartbeat: int) -> BaseStorage:
    """The study's storage: the folder's journal file, or an SQLAlchemy URL."""
    # Heartbeats and stale-trial retries are "experimental" in Optuna since 2.8: said once here.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    grace = max(3 * heartbeat, heartbeat + 2)
    if url is None:
        return HeartbeatJournalStorage(folder / JOURNAL_FILE, heartbeat, grace)
    _check_url(url)
    for attempt in range(3):  # workers starting together may race to create the tables
        try:
            return RDBStorage(
                url,
                heartbeat_interval=heartbeat,
                grace_period=grace,
                heartbeat_stale_trial_callback=RetryStaleTrial(),
            )
        except ImportError:  # the driver the URL names: psycopg2 for postgresql+psycopg2
            driver = f" ({make_url(url).get_driver_name()})"
            raise CnnlabError(
                f"--storage {redact(url)}: its database driver{driver} is not installed; "
                "postgresql:// uses psycopg (installed with cnnlab): write postgresql://..., "
                "or pip install the driver"
            ) from None
        except ArgumentError as err:  # e.g. a dialect SQLAlchemy does not know
            raise _cannot_open(url, err) from None
        except (DBAPIError, StorageInternalError) as err:  # refused, unreachable, or a race
            if attempt == 2:
                raise _cannot_open(url, err) from None
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def _check_url(url: str) -> None:
    """A malformed URL is the user's to fix, said before any connection is tried."""
    if url.startswith("postgres://"):  # Heroku's and libpq's spelling; SQLAlchemy's is longer
        raise CnnlabError(
            f"--storage {redact(url)!r}: SQLAlchemy names PostgreSQL postgresql://, not "
            "postgres://; write postgresql://..."
        )
    if "://" in url:
        try:
            make_url(url)
            return
        except (ArgumentError, ValueError):  # ValueError: e.g. a port that is not a number
            pass
    raise CnnlabError(
        f"--storage {redact(url)!r} is not a database URL; use e.g. "
        "postgresql://user@host/db, or leave it out for a journal file in the sweep folder"
    )


def _cannot_open(url: str, err: Exception) -> CnnlabError:
    """The database's own first line, with the password hidden, and what to check."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return CnnlabError(
        f"cannot open the study database {redact(url)}: {first}; check the URL, that the "
        "server runs and that this machine may connect"
    )


def redact(url: str | None) -> str:
    """A URL safe to print and to save: the password replaced by ***."""
    if url is None:
        return JOURNAL_FILE
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # not a URL: keep only what follows any user:password@
        return url.split("@")[-1]
