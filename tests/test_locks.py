"""One run per step and day (jobs/common/locks.py): a second run is refused naming the
owner, a dead owner's lock is taken over, the lock goes when the step ends however it ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.common.locks import StepLocked, lock_location, step_lock


def _path(wh, step="ingest", day="2026-09-01"):
    return lock_location(str(wh), step, day).removeprefix("file://")


def test_a_second_run_is_refused_while_the_first_holds_the_lock_and_the_lock_goes_afterwards(tmp_path):
    with step_lock(str(tmp_path), "ingest", "2026-09-01"):
        owner = json.loads(Path(_path(tmp_path)).read_text())
        assert owner["pid"] == os.getpid()
        with (pytest.raises(StepLocked, match=rf"ingest 2026-09-01 is already running \(pid {os.getpid()}"),
              step_lock(str(tmp_path), "ingest", "2026-09-01")):
            pass
        with step_lock(str(tmp_path), "ingest", "2026-09-02"), step_lock(str(tmp_path), "profiles", "2026-09-01"):
            pass  # other days and other steps are not blocked
    assert not os.path.exists(_path(tmp_path))
    with pytest.raises(ValueError), step_lock(str(tmp_path), "ingest", "2026-09-01"):
        raise ValueError("the step failed")
    assert not os.path.exists(_path(tmp_path))


def test_the_lock_of_a_killed_run_is_taken_over_on_the_same_host(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with step_lock(str(tmp_path), "ingest", "2026-09-01"):
        pass
    os.makedirs(os.path.dirname(_path(tmp_path)), exist_ok=True)
    import socket

    with open(_path(tmp_path), "w") as fh:
        json.dump({"host": socket.gethostname(), "pid": dead.pid, "token": "x", "since": "then"}, fh)
    with step_lock(str(tmp_path), "ingest", "2026-09-01"):
        assert json.loads(Path(_path(tmp_path)).read_text())["pid"] == os.getpid()
    # Another host's lock cannot be judged: refused, naming the file to delete.
    with open(_path(tmp_path), "w") as fh:
        json.dump({"host": "elsewhere", "pid": 1, "token": "y", "since": "then"}, fh)
    with pytest.raises(StepLocked, match="on elsewhere.*delete the lock file"), \
            step_lock(str(tmp_path), "ingest", "2026-09-01"):
        pass


def test_the_hadoop_store_of_remote_warehouses_creates_only_once(spark, tmp_path):
    # Remote warehouses take their lock through Hadoop's file system; here its local one.
    from jobs.common.locks import _HadoopStore

    store, uri = _HadoopStore(spark), f"file://{tmp_path}/_locks/ingest/2026-09-01.lock"
    assert store.read(uri) is None
    assert store.create(uri, '{"pid": 1}') and not store.create(uri, '{"pid": 2}')
    assert store.read(uri) == '{"pid": 1}'
    store.delete(uri)
    assert store.read(uri) is None and store.create(uri, "again")
