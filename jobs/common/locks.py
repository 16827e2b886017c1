"""One run at a time per step and day: a lock file in the warehouse.

``<warehouse>/_locks/<step>/<D>.lock`` is created atomically (``O_CREAT | O_EXCL`` on a
local or mounted warehouse; Hadoop's ``create`` without overwrite elsewhere, atomic on
HDFS) and holds its owner: host, process id and start time. A second run of the same step
for the same day finds it and stops with :class:`StepLocked`, naming the owner, instead of
writing the same partitions at the same time. The lock is removed when the step ends,
however it ends. A run killed outright (SIGKILL, a lost machine) leaves it behind: a later
run on the same host takes it over once the owner's process is gone; from another host it
cannot tell, and says which file to delete once the owner is known to be dead.

Holding the lock also makes it safe for the step to delete what an earlier, killed run of
the same step and day left behind (staged partitions, scratch folders): no one else is
writing them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from schemas.catalog import absolute_uri

log = logging.getLogger(__name__)


class StepLocked(RuntimeError):
    """Another run of the same step and day holds the lock."""


def lock_location(warehouse: str, step: str, date: str) -> str:
    return f"{absolute_uri(warehouse).rstrip('/')}/_locks/{step}/{date}.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _LocalStore:
    def create(self, uri: str, text: str) -> bool:
        path = Path(uri.removeprefix("file://").removeprefix("file:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return True

    def read(self, uri: str) -> str | None:
        try:
            return Path(uri.removeprefix("file://").removeprefix("file:")).read_text()
        except FileNotFoundError:
            return None

    def delete(self, uri: str) -> None:
        Path(uri.removeprefix("file://").removeprefix("file:")).unlink(missing_ok=True)


class _HadoopStore:
    """The warehouse's Hadoop file system (jobs/common/storage.py), for remote warehouses."""

    def __init__(self, spark):
        from jobs.common.storage import FileSystem

        self.fs = FileSystem(spark)

    def create(self, uri: str, text: str) -> bool:
        return self.fs.create_new(uri, text)

    def read(self, uri: str) -> str | None:
        return self.fs.read_text(uri) if self.fs.exists(uri) else None

    def delete(self, uri: str) -> None:
        self.fs.delete(uri)


def _store(uri: str, spark):
    if uri.startswith("file:"):
        return _LocalStore()
    if spark is None:
        return None
    return _HadoopStore(spark)


@contextmanager
def step_lock(warehouse: str, step: str, date: str, spark=None) -> Iterator[None]:
    """Hold the lock of ``step`` for ``date`` while the block runs; StepLocked when another
    live run holds it. Without Spark on a remote warehouse no lock is taken (logged)."""
    uri = lock_location(warehouse, step, date)
    store = _store(uri, spark)
    if store is None:
        log.warning("%s %s: no lock taken (a remote warehouse needs a Spark session for it)", step, date)
        yield
        return
    me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
          "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    text = json.dumps(me)
    if not store.create(uri, text):
        held = store.read(uri)
        owner = json.loads(held) if held else {}
        if owner.get("host") == me["host"] and not _alive(int(owner.get("pid", -1))):
            log.warning("%s %s: taking over the lock of a run that died (pid %s, since %s)", step, date,
                        owner.get("pid"), owner.get("since"))
            store.delete(uri)
            if not store.create(uri, text):
                raise StepLocked(f"{step} {date}: another run took the lock {uri} first; wait for it to end")
        else:
            raise StepLocked(
                f"{step} {date} is already running (pid {owner.get('pid')} on {owner.get('host')} since "
                f"{owner.get('since')}; lock {uri}). Wait for it to end; if that run is known to be dead on "
                "another machine, delete the lock file and re-run")
    try:
        yield
    finally:
        held = store.read(uri)
        if held and json.loads(held).get("token") == me["token"]:
            store.delete(uri)
