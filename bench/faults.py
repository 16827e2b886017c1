"""Fault campaign: kill each step's driver at random moments, re-run it, and count what
survived.

    python bench/faults.py [--faults-per-step 33] [--redis-kills 20] [--executor-kills 10] [--seed 0]
                           [--steps ingest,...] [--work DIR] [--quick]

On a small synthetic feed (3 days; 2 when only data steps are under test), the undisturbed
chain (up to the last step --steps needs) gives the reference tables. Then, for each step
of the last day (ingest, profiles, index, triples, evaluate, export, and
publish when redis-server is installed), from the warehouse as it stood before that step:

1. two runs of the step for the same day start at once (``tagrecall <step>``, separate
   processes): one must stop with "already running" (the step's lock) and the other finish;
   its tables must equal the reference;
2. ``--faults-per-step`` times: the step starts in its own process and gets SIGKILL (with
   its JVM and Python workers) at a moment drawn uniformly (seeded) over its undisturbed
   run, counted from when it takes its lock (its JVM is up), while a reader polls the
   step's output partitions with pyarrow: every read must be the partition before the step
   or the reference after it, never a mix (a moment with no partition, between the two
   renames of the swap, is counted apart: the warehouse's readers repair it). The step is
   then re-run (in this process's Spark session) and its tables compared with the reference
   (rows and values); no staged partition, scratch folder, lock or temporary run report may
   be left behind.

For publish, the reader is the online recall, looping over users: every answer must be the
tags of the day its version's meta names; after the re-run only the current and previous
versions may have keys. The user-tag model step (tag_model) is in the campaign too: its
re-run must give the same scores (training is seeded).

Then:

3. ``--redis-kills`` times, redis-server itself gets SIGKILL, alternately during a publish
   and while only the recall loop reads, and is restarted from its append-only file (fsync
   always, as a production server with AOF would). The pointer must still name the
   version before (or the new one, complete, if publish had finished first), a failed
   publish must say to re-run it, the recall loop must get an error or that day's tags,
   never a mix, and must read again after the restart; the next publish must leave only
   the current and previous versions.
4. ``--executor-kills`` times, on a standalone cluster started here (a master and one
   2-core worker), a Spark step (in turn) runs with ``spark.master`` pointing at it and its
   executor gets SIGKILL at a random moment: the step must finish with the reference
   tables (Spark re-runs the lost tasks on the executor the master starts in its place),
   or fail and leave its tables as they were, after which a plain re-run gives the
   reference.

The moments and outcomes go to <work>/faults.json. The last line is the summary, e.g.
``faults: 70 injected, 70 survived, 0 rows lost, 0 mixed reads``; the exit status is 1 if
a row was lost, a read was mixed or a fault was not survived. A run that ended before its
kill moment is reported, not counted as a fault, and drawn again over a window shrunk by a
quarter, so that every step gets its count of faults. ``--format delta`` runs the campaign
on Delta tables, the reader and the checks going through the Delta log (models/tables.py).
``--quick`` (what the test suite runs, on Parquet, and on Delta for some steps): one kill per step, its moment drawn over 1.5 x the step's warm in-process time
instead of a timed undisturbed run, the concurrent pair for ingest only, one Redis kill
during publish, no cluster.

Not covered: the multi-task model's training (train reads with pyarrow, not Spark; its
version folder and the ``current`` pointer are each replaced by one rename,
models/train.py and models/registry.py; tests/test_training_data.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from record import append  # noqa: E402  (bench/ is on sys.path when a benchmark runs as a script)

from jobs import evaluate, export, index, ingest, profiles, publish, tag_model, triples  # noqa: E402
from jobs.common.session import build_session, first_tier_jit_env  # noqa: E402
from models import tables  # noqa: E402
from schemas.catalog import TABLES  # noqa: E402
from schemas.config import load_config  # noqa: E402

START = dt.date(2026, 9, 1)
DAYS = 3
# The data steps need one day before the killed one (its snapshots, profiles, index); the
# steps of the models need examples of two (train and tag_model skip without them).
DATA_STEPS = {"ingest", "profiles", "index", "triples"}
STEPS = {s.STEP.name: s.STEP for s in (ingest, profiles, index, triples, evaluate, tag_model, export,
                                       publish)}
TEMP_REPORT = re.compile(r"^\.+[\d-]+\.json\.[0-9a-f]{32}")
CONFIG = """
[export]
ranking = "profile"
[spark]
shuffle_partitions = 2
"""


def tables_of(step: str) -> list[str]:
    return [t.name for t in TABLES.values() if t.written_by == step]


def step_date(step: str, day: dt.date) -> dt.date:
    return day - dt.timedelta(days=1) if step == "evaluate" else day


FORMAT = "parquet"  # --format: the campaign's table format


def read_day(wh: Path, table: str, day: str) -> pd.DataFrame | None:
    """A day of a table as a reader outside Spark sees it now (a Parquet folder; a Delta
    day through the log's current version, models/tables.py); None when it is absent."""
    if FORMAT == "parquet":
        path = wh / table / f"dt={day}"
        return pq.read_table(path).to_pandas() if path.exists() else None
    config = load_config(overrides={"storage": {"warehouse": str(wh), "format": "delta"}})
    found = tables.partitions(config, table, [dt.date.fromisoformat(day)]).get(day)
    if found is None:
        return None
    return tables.read(config, found).to_pandas()


def fingerprint(wh: Path, table: str, day: str) -> str | None:
    """The rows of a day of a table as one value (order-free); None when it is absent."""
    df = read_day(wh, table, day)
    if df is None:
        return None
    df = df.astype(str)
    return str(pd.util.hash_pandas_object(df.sort_values(list(df.columns)).reset_index(drop=True)).sum())


def frame(wh: Path, table: str, day: str) -> pd.DataFrame:
    df = read_day(wh, table, day)
    return df.astype(str).sort_values(list(df.columns)).reset_index(drop=True)


def same_values(got: pd.DataFrame, ref: pd.DataFrame) -> tuple[bool, int]:
    """(equal, rows of ``ref`` missing from ``got``); floats compared to 1e-9 relative."""
    lost = len(ref.merge(got.drop_duplicates(), how="left", indicator=True).query("_merge == 'left_only'"))
    if len(got) != len(ref):
        return False, max(lost, len(ref) - len(got))
    try:
        pd.testing.assert_frame_equal(got, ref)
        return True, 0
    except AssertionError:
        pass
    num = {}
    for c in ref.columns:
        a, b = pd.to_numeric(got[c], errors="coerce"), pd.to_numeric(ref[c], errors="coerce")
        num[c] = a.notna().all() and b.notna().all() and ((a - b).abs() <= 1e-9 * b.abs().clip(lower=1)).all()
        if not num[c] and not (got[c] == ref[c]).all():
            return False, lost
    return True, 0


def leftovers(wh: Path, step: str, day: str) -> list[str]:
    found = []
    for t in tables_of(step):
        staging = wh / t / "_staging"
        found += [str(p) for p in staging.iterdir()] if staging.exists() else []
    scratch = wh / "_scratch"
    found += [str(p) for p in scratch.iterdir()] if scratch.exists() else []
    lock = wh / "_locks" / step / f"{day}.lock"
    found += [str(lock)] if lock.exists() else []
    runs = wh / "_runs" / step
    # Run reports are written to hidden temporary names, then renamed (checksums are Hadoop's).
    found += [str(p) for p in runs.glob(".*") if TEMP_REPORT.match(p.name)] if runs.exists() else []
    return found


class Poller(threading.Thread):
    """Reads the step's partitions until stopped; counts reads equal to before, after, absent, mixed."""

    def __init__(self, wh: Path, tables: list[str], day: str, allowed: dict[str, set]):
        super().__init__(daemon=True)
        self.wh, self.tables, self.day, self.allowed = wh, tables, day, allowed
        self.counts = {"reads": 0, "absent": 0, "mixed": 0}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for t in self.tables:
                try:
                    got = fingerprint(self.wh, t, self.day)
                except Exception:  # a file renamed or deleted under the read: read again
                    continue
                self.counts["reads"] += 1
                if got is None:
                    self.counts["absent"] += 1
                elif got not in self.allowed[t]:
                    self.counts["mixed"] += 1
            time.sleep(0.05)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Campaign:
    def __init__(self, work: Path, seed: int, per_step: int, steps: list[str], pairs: list[str], quick: bool,
                 redis_kills: int = 0, executor_kills: int = 0):
        self.work, self.rng, self.per_step, self.steps, self.pairs = work, random.Random(seed), per_step, steps, pairs
        self.quick, self.redis_kills, self.executor_kills = quick, redis_kills, executor_kills
        self.raw, self.conf = work / "raw", work / "faults.toml"
        self.records: list[dict] = []
        self.redis_proc = None
        self.redis_url = ""
        self.daemons: list[subprocess.Popen] = []
        self.clock = time.monotonic()

    # -- set-up ----------------------------------------------------------------------------
    def config(self, wh: Path):
        return load_config(str(self.conf), overrides={"storage": {"warehouse": str(wh), "raw": str(self.raw),
                                                                  "format": FORMAT},
                                                      "publish": {"redis_url": self.redis_url}})

    def prepare(self) -> None:
        from jobs.tools.synthetic import FeedParams, generate

        self.conf.write_text(CONFIG)
        days = 2 if set(self.steps) <= DATA_STEPS else DAYS
        generate(self.raw, START, days, FeedParams(users=300, articles=500, tags=60, seed=3))
        if "publish" in self.steps:
            self._start_redis()
        self.spark = build_session(self.config(self.work / "ref"), "tagrecall-faults", set_master=True)
        ref = self.work / "ref"
        last = START + dt.timedelta(days=days - 1)
        self.before: dict[str, Path] = {}
        self.in_process: dict[str, float] = {}
        # The chain up to the last step it needs: a step of D reads what the steps before it
        # wrote, and evaluate (of D-1) export's lists of D-1.
        names = list(STEPS)
        needed = set(self.steps) | ({"export"} if "evaluate" in self.steps else set())
        chain = names[:max((names.index(s) for s in needed), default=-1) + 1]
        for k in range(days):
            day = START + dt.timedelta(days=k)
            for name in chain:
                step = STEPS[name]
                if name == "publish" and not self.redis_url:
                    continue
                if day == last:  # the state each step of the last day starts from
                    self.before[name] = self.work / f"before-{name}"
                    shutil.copytree(ref, self.before[name])
                t0 = time.monotonic()
                step.invoke(self.spark, self.config(ref), step_date(name, day), if_ready=True)
                self.in_process[name] = time.monotonic() - t0
        self.day = last
        print(f"reference: {days} days x {len(self.in_process)} steps in this process, "
              f"{time.monotonic() - self.clock:.0f} s; last day "
              + ", ".join(f"{k} {v:.1f} s" for k, v in self.in_process.items()), flush=True)
        self.ref = ref

    def _start_redis(self) -> None:
        """redis-server on a free loopback port, with an append-only file (fsync always) so
        that a killed server restarts with what it had acknowledged."""
        binary = shutil.which("redis-server")
        if binary is None:
            print("redis-server not found: publish and the Redis faults are left out of the campaign", flush=True)
            self.steps = [s for s in self.steps if s != "publish"]
            self.redis_kills = 0
            return
        self.redis_port = free_port()
        self.redis_cmd = [binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.work)]
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self._restart_redis()
        # The recall's library, loaded once as the administrator would (tagrecall redis-acl
        # --apply; publish only checks for it): the append-only file keeps it across kills.
        import redis

        from jobs.online.redis_merge import load_library

        load_library(redis.Redis.from_url(self.redis_url))

    def _restart_redis(self) -> None:
        import redis

        self.redis_proc = subprocess.Popen(self.redis_cmd, stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.redis_url)
        for _ in range(200):
            try:
                if client.ping() and client.info("persistence")["loading"] == 0:
                    return
            except redis.RedisError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start: {' '.join(self.redis_cmd)}")

    # -- one step --------------------------------------------------------------------------
    def command(self, step: str, wh: Path) -> list[str]:
        day = step_date(step, self.day).isoformat()
        return [str(Path(sys.executable).with_name("tagrecall")), step, "--date", day, "--config", str(self.conf),
                "--warehouse", str(wh), "--raw", str(self.raw), "--format", FORMAT,
                "--set", f"publish.redis_url={self.redis_url}"]

    def fresh(self, step: str, name: str) -> Path:
        wh = self.work / name
        if wh.exists():
            shutil.rmtree(wh)
        shutil.copytree(self.before[step], wh)
        return wh

    def check(self, step: str, wh: Path) -> dict:
        day = step_date(step, self.day).isoformat()
        if step == "publish":
            return self.check_redis()
        equal, lost = True, 0
        for t in tables_of(step):
            ok, missing = same_values(frame(wh, t, day), frame(self.ref, t, day))
            equal, lost = equal and ok, lost + missing
        left = leftovers(wh, step, day)
        return {"equal": equal, "rows_lost": lost, "leftovers": left}

    def check_redis(self) -> dict:
        from jobs.online.keys import Keys, connect

        config = self.config(self.ref)
        client, keys = connect(config), Keys(config.publish.key_prefix)
        kept = {client.get(keys.current), client.get(keys.previous)} - {None}
        stray = {k.split(":")[2] for k in client.scan_iter(match=f"{keys.prefix}:v:*")} - kept
        versions = set(client.smembers(keys.versions)) - kept
        return {"equal": bool(kept) and not stray and not versions, "rows_lost": 0,
                "leftovers": sorted(stray | versions)}

    def expected_tags(self) -> dict[str, dict[str, list[str]]]:
        out = {}
        for day in (self.day - dt.timedelta(days=1), self.day):
            top = read_day(self.ref, "user_top_tags", day.isoformat()).sort_values(["user_id", "rank"])
            out[day.isoformat()] = {u: list(g.tag) for u, g in top.groupby("user_id")}
        return out

    def pair(self, step: str) -> dict:
        """Two runs at once: one must refuse (the lock), the other finish with the reference."""
        wh = self.fresh(step, "pair")
        procs = [subprocess.Popen(self.command(step, wh), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, env=first_tier_jit_env()) for _ in range(2)]
        outs = [p.communicate()[0] for p in procs]
        codes = [p.returncode for p in procs]
        refused = sum(c != 0 and "already running" in o for c, o in zip(codes, outs, strict=True))
        result = self.check(step, wh) if 0 in codes else {"equal": False, "rows_lost": 0, "leftovers": []}
        survived = refused <= 1 and codes.count(0) + refused == 2 and result["equal"] and not result["leftovers"]
        return {"step": step, "fault": "concurrent run", "exit_codes": codes, "refused": refused,
                "mixed_reads": 0, **result, "survived": survived}

    def started(self, proc: subprocess.Popen, step: str, wh: Path) -> bool:
        """Wait until the step holds its lock (its work begins; the JVM has started); False
        when the process ended first."""
        lock = wh / "_locks" / step / f"{step_date(step, self.day).isoformat()}.lock"
        while not lock.exists():
            if proc.poll() is not None:
                return False
            time.sleep(0.02)
        return True

    def duration(self, step: str) -> float:
        """Seconds the step runs undisturbed, from taking its lock to the process's end."""
        wh = self.fresh(step, "timing")
        proc = subprocess.Popen(self.command(step, wh), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=first_tier_jit_env())
        if not self.started(proc, step, wh):
            raise RuntimeError(f"{step} ended before taking its lock: run {' '.join(self.command(step, wh))}")
        t0 = time.monotonic()
        if proc.wait() != 0:
            raise RuntimeError(f"{step} failed undisturbed: run {' '.join(self.command(step, wh))}")
        return time.monotonic() - t0

    def kill(self, step: str, at: float, n: int) -> dict:
        """SIGKILL ``at`` seconds after the step took its lock, then re-run and check."""
        wh = self.fresh(step, "killed")
        day = step_date(step, self.day).isoformat()
        reader = self.reader(step, wh, day)
        reader.start()
        proc = subprocess.Popen(self.command(step, wh), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, env=first_tier_jit_env())
        if self.started(proc, step, wh):
            time.sleep(at)
        killed = proc.poll() is None
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and its JVM, as a lost machine would
        proc.wait()
        started = time.monotonic()
        STEPS[step].invoke(self.spark, self.config(wh), step_date(step, self.day))
        recovered = time.monotonic() - started
        time.sleep(0.2)
        reader.stop.set()
        reader.join()
        result = self.check(step, wh)
        mixed = reader.counts["mixed"]
        return {"step": step, "fault": "driver SIGKILL", "n": n, "at_s": round(at, 2), "killed_while_running": killed,
                "reads": reader.counts, "mixed_reads": mixed, "recover_s": round(recovered, 2), **result,
                "survived": result["equal"] and not result["leftovers"] and mixed == 0}

    # -- Redis -----------------------------------------------------------------------------
    def redis_state(self) -> tuple[str | None, dict]:
        """(current version, its meta hash)."""
        from jobs.online.keys import Keys, connect

        config = self.config(self.ref)
        client, keys = connect(config), Keys(config.publish.key_prefix)
        try:
            current = client.get(keys.current)
            return current, (client.hgetall(keys.meta(current)) if current else {})
        finally:
            client.close()

    def redis_kill(self, during: str, at: float, n: int) -> dict:
        """SIGKILL redis-server ``at`` seconds into a publish (or while only the online
        recall reads), restart it from its append-only file, re-run publish. The pointer
        must still name the version before (or the new one, complete, if publish had
        finished), the recall loop must get that day's tags or an error, never a mix, and
        the next publish must leave only the current and previous versions."""
        before, _ = self.redis_state()
        wh = self.fresh("publish", "killed")
        reader = RecallReader(self.config(wh), self.expected_tags())
        reader.start()
        proc = None
        if during == "publish":
            proc = subprocess.Popen(self.command("publish", wh), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, start_new_session=True, env=first_tier_jit_env())
            if self.started(proc, "publish", wh):
                time.sleep(at)
        else:
            time.sleep(at)
        killed = proc is None or proc.poll() is None
        self.redis_proc.kill()  # SIGKILL
        self.redis_proc.wait()
        time.sleep(0.3)  # the recall loop meets the server down
        output = proc.communicate(timeout=600)[0] if proc else ""
        code = proc.returncode if proc else None
        self._restart_redis()
        after, meta = self.redis_state()
        day = self.day.isoformat()
        pointer_ok = after == before or (code == 0 and meta.get("date") == day)
        # A publish that failed says why and what to do (jobs/publish.py's message).
        clear = code in (0, None) or "re-run the step when Redis is back" in output
        started = time.monotonic()
        STEPS["publish"].invoke(self.spark, self.config(wh), self.day)
        recovered = time.monotonic() - started
        time.sleep(0.2)
        reader.stop.set()
        reader.join()
        result = self.check_redis()
        mixed = reader.counts["mixed"]
        return {"step": "publish" if during == "publish" else "recall", "fault": "redis SIGKILL", "n": n,
                "at_s": round(at, 2), "killed_while_running": killed, "exit_code": code,
                "pointer_kept": pointer_ok, "clear_error": clear,
                "message": output.strip().splitlines()[-1][:300] if output.strip() else "",
                "reads": reader.counts, "mixed_reads": mixed, "recover_s": round(recovered, 2), **result,
                "survived": pointer_ok and clear and result["equal"] and not result["leftovers"] and mixed == 0
                and reader.counts["reads_after_restart"] > 0}

    # -- a standalone cluster ----------------------------------------------------------------
    def start_cluster(self) -> None:
        """A Spark standalone master and one worker (2 cores, 3 GB), as tests/test_dags.py starts them."""
        import urllib.request

        import pyspark

        spark_home = Path(pyspark.__file__).parent
        port, ui, self.worker_port = free_port(), free_port(), free_port()
        env = {**os.environ, "SPARK_HOME": str(spark_home), "SPARK_LOCAL_IP": "127.0.0.1",
               "SPARK_LOG_DIR": str(self.work / "spark-logs"), "SPARK_WORKER_DIR": str(self.work / "spark-work")}
        self.master_url = f"spark://127.0.0.1:{port}"
        for args in (["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                      "--webui-port", str(ui)],
                     ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--port", str(self.worker_port),
                      "--cores", "2", "--memory", "3g", "--webui-port", str(free_port()), self.master_url]):
            self.daemons.append(subprocess.Popen([str(spark_home / "bin" / "spark-class"), *args], env=env,
                                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                 start_new_session=True))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=2) as r:
                    if json.load(r).get("aliveworkers", 0) >= 1:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the standalone cluster did not start (logs in {self.work / 'spark-logs'})")

    def executors(self) -> list[int]:
        """Pids of the executors our worker launched."""
        mark = f"Worker@127.0.0.1:{self.worker_port}"
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "CoarseGrainedExecutorBackend" in cmd and mark in cmd:
                pids.append(int(proc.name))
        return pids

    def executor_kill(self, step: str, at: float, n: int) -> dict:
        """The step on the standalone cluster; its executor gets SIGKILL ``at`` seconds after
        it started. The step must finish with the reference tables (Spark re-runs the lost
        tasks on a new executor), or fail leaving the tables as they were; then a plain
        re-run gives the reference."""
        wh = self.fresh(step, "cluster")
        day = step_date(step, self.day).isoformat()
        reader = self.reader(step, wh, day)
        reader.start()
        proc = subprocess.Popen(self.command(step, wh) + ["--set", f"spark.master={self.master_url}"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                env=first_tier_jit_env(SPARK_LOCAL_IP="127.0.0.1"))
        victims: list[int] = []
        while proc.poll() is None and not victims:
            victims = self.executors()
            time.sleep(0.05)
        if victims:
            time.sleep(at)
        killed = bool(victims) and proc.poll() is None and all(Path(f"/proc/{v}").exists() for v in victims)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        output = proc.communicate(timeout=900)[0]
        code = proc.returncode
        kept = True
        if code != 0 and step != "publish":  # a failed run leaves the tables as they were
            kept = all(fingerprint(wh, t, day) == fingerprint(self.before[step], t, day)
                       for t in tables_of(step))
        started = time.monotonic()
        if code != 0:
            STEPS[step].invoke(self.spark, self.config(wh), step_date(step, self.day))
        recovered = time.monotonic() - started
        time.sleep(0.2)
        reader.stop.set()
        reader.join()
        result = self.check(step, wh)
        mixed = reader.counts["mixed"]
        return {"step": step, "fault": "executor SIGKILL", "n": n, "at_s": round(at, 2),
                "killed_while_running": killed, "exit_code": code, "previous_kept": kept,
                "message": "" if code == 0 else output.strip().splitlines()[-1][:300],
                "reads": reader.counts, "mixed_reads": mixed, "recover_s": round(recovered, 2), **result,
                "survived": kept and result["equal"] and not result["leftovers"] and mixed == 0}

    def reader(self, step: str, wh: Path, day: str):
        if step == "publish":
            return RecallReader(self.config(wh), self.expected_tags())
        allowed = {t: {fingerprint(self.before[step], t, day), fingerprint(self.ref, t, day)}
                   for t in tables_of(step)}
        return Poller(wh, tables_of(step), day, allowed)

    def run(self) -> int:
        for step in self.steps:
            if step in self.pairs:
                self.record(self.pair(step))
            # Quick: the warm in-process run's time, x 1.5 for a cold process, instead of timing one.
            total = 1.5 * self.in_process[step] if self.quick else self.duration(step)
            self.until_injected(self.per_step, lambda n, scale, t=total, st=step: self.kill(
                st, self.rng.uniform(0.0, 0.95) * t * scale, n))
        for during, count in (("publish", (self.redis_kills + 1) // 2), ("recall", self.redis_kills // 2)):
            if not count:  # also: no publish in --steps, so no in-process time of it
                continue
            total = 1.5 * self.in_process["publish"] if during == "publish" else 2.0
            self.until_injected(count, lambda n, scale, t=total, d=during: self.redis_kill(
                d, self.rng.uniform(0.0, 0.95) * t * scale, n))
        if self.executor_kills:
            self.start_cluster()
            spark_steps = [s for s in self.steps if STEPS[s].needs_spark]
            for k, step in enumerate(spark_steps):
                # From the executor's start; a cluster run is slower than the warm in-process one.
                count = self.executor_kills // len(spark_steps) + (k < self.executor_kills % len(spark_steps))
                self.until_injected(count, lambda n, scale, st=step: self.executor_kill(
                    st, self.rng.uniform(0.0, 0.95) * 1.5 * self.in_process[st] * scale, n))
        return self.summary()

    def until_injected(self, count: int, fault) -> None:
        """Run ``fault(n, scale)`` until ``count`` faults hit a running process: a run that
        ended before its kill moment is recorded (its checks count) and the fault is drawn
        again over a window shrunk by a quarter."""
        injected, scale, n = 0, 1.0, 0
        while injected < count:
            n += 1
            r = fault(n, scale)
            self.record(r)
            if r.get("killed_while_running", True):
                injected += 1
            else:
                scale *= 0.75
            if n > 3 * count + 10:
                raise RuntimeError(f"{r['step']}: {n} runs ended before their kill moment; the step is too "
                                   "short to kill at a random moment")

    def record(self, r: dict) -> None:
        self.records.append(r)
        status = "survived" if r["survived"] else "NOT SURVIVED"
        extra = f"at {r['at_s']} s" if "at_s" in r else f"exit codes {r['exit_codes']}"
        if not r.get("killed_while_running", True):
            status = "ended before the kill (not counted); " + status
        print(f"{time.monotonic() - self.clock:6.0f}s {r['step']:<9} {r['fault']:<16} {extra:<22} {status}"
              + (f"; mixed reads {r['mixed_reads']}" if r["mixed_reads"] else "")
              + (f"; leftovers {r['leftovers'][:3]}" if r["leftovers"] else ""), flush=True)

    def summary(self) -> int:
        (self.work / "faults.json").write_text(json.dumps(self.records, indent=2))
        # A run that ended before its kill moment was not a fault; its checks still count.
        faults = [r for r in self.records if r.get("killed_while_running", True)]
        injected, survived = len(faults), sum(r["survived"] for r in faults)
        lost = sum(r["rows_lost"] for r in self.records)
        mixed = sum(r["mixed_reads"] for r in self.records)
        failed = [r for r in self.records if not r["survived"]]
        missed = len(self.records) - injected
        if missed:
            print(f"{missed} run(s) ended before their kill moment (not counted as faults)")
        by_step = {}
        for r in faults:
            s = by_step.setdefault((r["step"], r["fault"]), [0, 0, []])
            s[0] += 1
            s[1] += r["survived"]
            s[2] += [r["recover_s"]] if "recover_s" in r else []
        print(f"\n{'step':<10}{'fault':<18}{'injected':>9}{'survived':>9}{'median recovery s':>19}")
        for (step, fault), (n, ok, rec) in by_step.items():
            median = sorted(rec)[len(rec) // 2] if rec else float("nan")
            print(f"{step:<10}{fault:<18}{n:>9}{ok:>9}{median:>19.1f}")
        print(f"faults: {injected} injected, {survived} survived, {lost} rows lost, {mixed} mixed reads")
        if not self.quick:  # the test suite's quick campaign is a test, not a benchmark run
            append("faults", {"faults_per_step": self.per_step, "redis_kills": self.redis_kills,
                              "executor_kills": self.executor_kills, "format": FORMAT},
                   {"injected": injected, "survived": survived, "rows_lost": lost, "mixed_reads": mixed})
        return 0 if not failed and lost == 0 and mixed == 0 else 1

    def close(self) -> None:
        if self.redis_proc is not None:
            self.redis_proc.terminate()
        for proc in self.daemons:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


class RecallReader(threading.Thread):
    """The online recall in a loop (the merge in Redis, FCALL_RO: the campaign loads the function at
    the start, the append-only file keeps it across a restart): every answer must hold the tags of the day its
    version names."""

    def __init__(self, config, expected: dict[str, dict[str, list[str]]]):
        super().__init__(daemon=True)
        self.config, self.expected = config, expected
        self.counts = {"reads": 0, "absent": 0, "mixed": 0, "errors": 0, "reads_after_restart": 0}
        self.stop = threading.Event()

    def run(self) -> None:
        import redis

        from jobs.online.keys import connect
        from jobs.online.recall import recall_in_redis

        client = connect(self.config, "reader")
        users = sorted({u for day in self.expected.values() for u in day})
        i = 0
        while not self.stop.is_set():
            user = users[i % len(users)]
            i += 1
            try:
                got = recall_in_redis(client, user, prefix=self.config.publish.key_prefix)  # never the Python path
            except (LookupError, RuntimeError):
                self.counts["absent"] += 1
                continue
            except redis.RedisError:  # the server is down: the caller gets a clear error
                self.counts["errors"] += 1
                time.sleep(0.02)
                continue
            self.counts["reads"] += 1
            if self.counts["errors"]:
                self.counts["reads_after_restart"] += 1
            want = self.expected.get(got.date, {}).get(user)
            if got.source == "user" and [t for t, _ in got.tags] != want:
                self.counts["mixed"] += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faults-per-step", type=int, default=33,
                    help="driver kills per step, each at a moment that hit the running step (default 33: with "
                         "the concurrent pairs, the Redis and the executor kills, 302 faults)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--work", help="working folder (default: a new temporary one, deleted at the end)")
    ap.add_argument("--redis-kills", type=int, default=20,
                    help="SIGKILLs of redis-server, alternately during publish and during the recall loop")
    ap.add_argument("--executor-kills", type=int, default=10,
                    help="SIGKILLs of an executor of a standalone cluster, the Spark steps in turn")
    ap.add_argument("--format", choices=("parquet", "delta"), default="parquet",
                    help="the warehouse's table format (Delta: its readers go through the Delta log)")
    ap.add_argument("--quick", action="store_true",
                    help="one kill per step, the concurrent pair for ingest only, one Redis kill during "
                         "publish, no cluster")
    args = ap.parse_args()
    global FORMAT
    FORMAT = args.format
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        ap.error(f"unknown steps {unknown}; known: {', '.join(STEPS)}")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="tagrecall-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.quick:
        per_step, pairs, redis_kills, executor_kills = 1, ["ingest"], 1, 0
    else:
        per_step, pairs, redis_kills, executor_kills = args.faults_per_step, steps, args.redis_kills, args.executor_kills
    if "publish" not in steps:
        redis_kills = 0
    campaign = Campaign(work, args.seed, per_step, steps, pairs, args.quick, redis_kills, executor_kills)
    started = time.monotonic()
    try:
        campaign.prepare()
        code = campaign.run()
    finally:
        campaign.close()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"({time.monotonic() - started:.0f} s)")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
