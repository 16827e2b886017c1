"""The Airflow DAG: its shape, and a real `airflow dags test` whose SparkSubmitOperator
tasks run on a real Spark standalone cluster with a shipped environment, on Delta tables,
giving the tables that `tagrecall run` gives in local mode on Parquet."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from jobs.common.session import class_archive_option
from models import tables
from schemas.config import load_config
from tests.conftest import CLI_DAY1 as DAY1
from tests.conftest import CLI_DAY2 as DAY2
from tests.conftest import free_port, short_jvm_env

pytest.importorskip("airflow", reason="the airflow extra is not installed (pip install -e '.[airflow]')")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMPARED = ("events", "rejected", "articles", "users", "user_tag_profile", "tag_index", "tag_stats",
            "training_triples", "user_top_tags")
CHAIN = ("ingest", "profiles", "index", "triples", "evaluate", "train", "tag_model", "export", "publish")
TASKS = (*CHAIN, "vacuum")  # the chain of day D, then the Delta tables' upkeep
SPARK_TASKS = tuple(t for t in TASKS if t != "train")  # train is a Python task: no Spark application


# The drivers spark-submit starts map the class archive `make setup` recorded (when current).
DRIVER_JAVA_OPTIONS = class_archive_option("auto")


def _env(**extra) -> dict:
    return short_jvm_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", AIRFLOW__CORE__LOAD_EXAMPLES="False",
                         **extra)


def _run(args, timeout=900, **env):
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=_env(**env))
    assert done.returncode == 0, f"{args[:3]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def _dist(path: Path) -> Path:
    """What `make dist` builds: the packages as one zip for --py-files."""
    with zipfile.ZipFile(path, "w") as z:
        for pkg in ("jobs", "models", "schemas"):
            for f in sorted((REPO / pkg).rglob("*")):
                if f.is_file() and "__pycache__" not in f.parts:
                    z.write(f, f.relative_to(REPO))
    return path


def _table(wh: Path, name: str, day: str, table_format: str) -> pd.DataFrame:
    """A day of a table as the readers outside Spark read it (a Delta day through its log)."""
    config = load_config(overrides={"storage": {"warehouse": str(wh), "format": table_format}})
    found = tables.partitions(config, name, [dt.date.fromisoformat(day)])[day]
    df = tables.dataset([found]).to_table().to_pandas()
    df = df.drop(columns=[c for c in ("model_version",) if c in df.columns])
    for c in df.columns:
        if df[c].map(lambda v: isinstance(v, list | tuple | dict) or hasattr(v, "tolist")).any():
            df[c] = df[c].map(lambda v: json.dumps(v.tolist() if hasattr(v, "tolist") else v, default=str,
                                                   sort_keys=True))
    return df.sort_values(list(df.columns)).reset_index(drop=True)


def _assert_same_tables(a: Path, b: Path, day: str, b_format: str = "parquet") -> None:
    for name in COMPARED:
        left, right = _table(a, name, day, "parquet"), _table(b, name, day, b_format)
        assert len(left) == len(right), f"{name}: {len(left)} rows vs {len(right)}"
        pd.testing.assert_frame_equal(left, right, check_exact=False, rtol=1e-9, obj=name)


@pytest.fixture(scope="module")
def two_days(cli_two_days, tmp_path_factory):
    """Two generated days (tests/conftest.py): ``local`` both days run with `tagrecall run`;
    and the --py-files zip."""
    base, _ = cli_two_days
    return base, _dist(tmp_path_factory.mktemp("dist") / "tagrecall.zip")


def test_dag_parses_fast_without_heavy_imports_and_has_the_chain():
    probe = ("import sys, time; t = time.perf_counter(); import runpy; "
             "runpy.run_path('dags/tagrecall_daily.py'); "
             "heavy = [m for m in ('tensorflow', 'keras', 'pyspark', 'models', 'schemas.tables') "
             "if m in sys.modules]; "
             # the list of Delta's jars only: no step module, nothing that imports Spark
             "heavy += [m for m in sys.modules if m.startswith('jobs.') and m not in ('jobs.common', 'jobs.common.delta')]; "
             "print(time.perf_counter() - t, heavy)")
    out = _run([sys.executable, "-c", probe], timeout=120).stdout.strip().splitlines()[-1]
    seconds, heavy = out.split(" ", 1)
    assert heavy == "[]", f"the DAG file imported {heavy} at parse time"
    print(f"DAG file parse: {float(seconds):.2f}s (including importing Airflow)")

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    dag = bag.dags["tagrecall_daily"]
    assert {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks} == {
        a: ([b] if b else []) for a, b in zip(TASKS, [*TASKS[1:], None], strict=True)}
    assert all(t.retries >= 1 and t.retry_delay.total_seconds() > 0 for t in dag.tasks)
    assert dag.get_task("profiles").depends_on_past and dag.max_active_runs == 1
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
    assert dag.doc_md and "data_interval_start" in dag.doc_md and "tagrecall" in dag.tags
    assert all(type(dag.get_task(t)).__name__ == "SparkSubmitOperator" for t in SPARK_TASKS)
    assert type(dag.get_task("train")).__name__ == "_PythonDecoratedOperator"  # @task, no command line
    # Lineage: every table of the catalog is an outlet of the task of the step that writes it,
    # and an inlet of each task that reads it; the raw landing feeds ingest.
    from schemas.catalog import TABLES

    names = {t.task_id: ({a.name for a in t.outlets}, {a.name for a in t.inlets}) for t in dag.tasks}
    for table in TABLES.values():
        assert f"tagrecall.{table.name}" in names[table.written_by][0], table.name
    assert {"tagrecall.raw.events", "tagrecall.raw.articles", "tagrecall.raw.users"} <= names["ingest"][1]
    assert "tagrecall.training_triples" in names["train"][1] and "tagrecall.model" in names["train"][0]
    assert "tagrecall.model" in names["export"][1] and "tagrecall.redis" in names["publish"][0]


@pytest.mark.parametrize(("zone", "utc_start"), [
    ("Asia/Shanghai", "2026-11-04T16:00:00+00:00"),        # east of UTC: local midnight is the day before in UTC
    ("America/Los_Angeles", "2026-11-05T08:00:00+00:00"),  # west of UTC (PST, after the 11-01 change)
])
def test_the_date_passed_to_every_task_is_the_local_day_of_the_schedules_time_zone(zone, utc_start, monkeypatch):
    """The scheduled run for local day 2026-11-05 in ``zone``: its data interval from the
    DAG's real timetable, its start as the metadata database keeps it (UTC), each task's
    date rendered by Airflow's template engine: D = 2026-11-05, and evaluate's D-1 = 2026-11-04."""
    import pendulum
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.execution_time import macros
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    monkeypatch.setenv("TAGRECALL_SCHEDULE_TZ", zone)  # read when the DAG file is parsed
    dag = DagBag(dag_folder=str(REPO / "dags")).dags["tagrecall_daily"]
    local_midnight = pendulum.datetime(2026, 11, 5, tz=zone)
    run = coerce_to_core_timetable(dag.timetable).next_dagrun_info(
        last_automated_data_interval=None, restriction=TimeRestriction(earliest=local_midnight, latest=None,
                                                                       catchup=True))
    start = pendulum.instance(run.data_interval.start).in_timezone("UTC")  # as stored and handed to the task
    assert start.isoformat() == utc_start and start == local_midnight
    context = {"data_interval_start": start, "data_interval_end": run.data_interval.end.in_timezone("UTC"),
               "macros": macros, "dag": dag}

    def rendered_date(task_id: str) -> str:
        task = dag.get_task(task_id)
        if task_id == "train":
            return task.render_template(task.op_kwargs["date"], context)
        args = task.application_args
        return task.render_template(args[args.index("--date") + 1], context)

    dates = {t: rendered_date(t) for t in CHAIN}
    assert dates == {t: "2026-11-04" if t == "evaluate" else "2026-11-05" for t in CHAIN}


def _packed_env(tmp_path: Path) -> tuple[Path, Path]:
    """A packed environment for --archives whose bin/python records each start (in
    ``used/``) and runs this interpreter: small enough for a test, unlike a real
    `make env-archive` of TensorFlow and friends, and it proves the executors ran it."""
    import tarfile

    used = tmp_path / "used"
    used.mkdir()
    python = tmp_path / "env" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\ntouch "{used}/$$"\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    archive = tmp_path / "tagrecall-env.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "env", arcname=".")
    return archive, used


@contextlib.contextmanager
def _standalone_cluster(tmp_path: Path):
    """A real Spark standalone master and one worker (2 cores, 3 GB) on 127.0.0.1, started
    with `spark-class` from the installed pyspark: yields (master port, the worker's
    folder, which holds one app-* folder per application run). Both daemons are stopped
    on the way out, even on failure."""
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    port = free_port()
    env = _env(SPARK_HOME=str(spark_home), SPARK_LOCAL_IP="127.0.0.1", SPARK_LOG_DIR=str(tmp_path / "logs"),
               SPARK_WORKER_DIR=str(tmp_path / "work"))
    daemons = []
    try:
        for args in (["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                      "--webui-port", str(free_port())],
                     ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "2",
                      "--memory", "3g", "--webui-port", str(free_port()), f"spark://127.0.0.1:{port}"]):
            daemons.append(subprocess.Popen([str(spark_home / "bin" / "spark-class"), *args], env=env,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True))
            time.sleep(3)
        yield port, tmp_path / "work"
    finally:
        for proc in daemons:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    # Reached on a normal exit only, so that it never hides the test's own failure.
    assert all(p.poll() is not None for p in daemons)


@pytest.mark.slow
def test_airflow_runs_the_day_on_a_standalone_cluster_on_delta_and_writes_what_tagrecall_run_writes(
        two_days, tmp_path, redis_server, delta):
    """`airflow dags test` of DAY2 on a Delta warehouse, every Spark task submitted by
    SparkSubmitOperator to a real standalone cluster with the code as --py-files, Delta's
    jars as --jars and a packed environment as --archives (the DAG's TAGRECALL_ARCHIVES),
    publish writing to a real Redis from the executors, vacuum last: the tables equal
    those of `tagrecall run` in local mode on Parquet."""
    base, dist = two_days
    archive, used = _packed_env(tmp_path)
    wh = tmp_path / "warehouse"
    # DAY1 on Delta, as `tagrecall run` in local mode writes it (the state DAY2 starts from).
    _run([BIN / "tagrecall", "run", "--date", DAY1, "--format", "delta", "--warehouse", wh, "--raw", base / "raw"])
    with _standalone_cluster(tmp_path) as (port, work):
        env = {"AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
               "AIRFLOW_CONN_TAGRECALL_SPARK": json.dumps({"conn_type": "spark", "host": "spark://127.0.0.1",
                                                           "port": port}),
               "AIRFLOW_VAR_TAGRECALL_WAREHOUSE": str(wh), "AIRFLOW_VAR_TAGRECALL_RAW": str(base / "raw"),
               "AIRFLOW_VAR_TAGRECALL_FORMAT": "delta",
               "AIRFLOW_VAR_TAGRECALL_PY_FILES": str(dist), "TAGRECALL_DRIVER_JAVA_OPTIONS": DRIVER_JAVA_OPTIONS,
               "TAGRECALL_ARCHIVES": f"{archive}#environment", "TAGRECALL_REDIS_URL": redis_server(),
               "SPARK_LOCAL_IP": "127.0.0.1"}
        _run([BIN / "airflow", "db", "migrate"], **env)
        # A manual run at DAY2 + 1 day covers the interval [DAY2, DAY2 + 1 day): D = DAY2.
        started = time.monotonic()
        done = _run([BIN / "airflow", "dags", "test", "tagrecall_daily", "2026-09-03"], timeout=1500, **env)
        print(f"airflow dags test on the standalone cluster: {time.monotonic() - started:.0f}s")
        apps = list(work.glob("app-*"))
    assert "DagRun Finished" in done.stdout + done.stderr
    _assert_same_tables(base / "local", wh, DAY2, "delta")
    assert (wh / "events" / "_delta_log").is_dir() and not (base / "local" / "events" / "_delta_log").exists()
    runs = wh / "_runs"
    evaluated = json.loads((runs / "evaluate" / f"{DAY1}.json").read_text())
    assert evaluated["status"] in ("succeeded", "skipped")
    # publish wrote to Redis from the executors (foreachPartition): Python on the worker.
    published = json.loads((runs / "publish" / f"{DAY2}.json").read_text())
    assert published["status"] == "succeeded" and published["written"]["users"] > 0
    # Every Spark task ran on the cluster (one application folder each: train is a Python
    # task), and the executors started Python from the shipped archive.
    assert len(apps) == len(SPARK_TASKS), sorted(a.name for a in apps)
    assert any(work.glob("app-*/*/environment/bin/python"))
    assert list(used.iterdir()), "no executor started the archive's Python"
