"""tagrecall_daily: the daily chain of tagrecall for the day D = data_interval_start, as a
date in the schedule's time zone.

One run per day, on a data-interval timetable (midnight to midnight, UTC by default): the
run for D starts once D is over. Airflow keeps and hands over the interval's start in UTC,
where a local midnight east of UTC falls on the day before: D is that start converted to
TAGRECALL_SCHEDULE_TZ first. Tasks, each rewriting only its own partition of D:

    ingest -> profiles -> index -> triples -> evaluate (D-1) -> train -> tag_model -> export -> publish
    -> vacuum

(evaluate for D-1 needs D's events; it runs before export, whose guard reads it; vacuum
deletes the files of Delta tables no version within storage.vacuum_retain_hours needs,
and does nothing on a Parquet warehouse).

Retries are safe. A backfill of D uses nothing of later days: export and train's gate read
the model current as of D, never a later day's (models/registry.py), and a re-trained model
of D moves `current` only if no later day has promoted one. But publish makes the day it
publishes live in Redis: backfill old days without the publish task (or without Redis
configured), or the last day backfilled is what readers get.

- The Spark steps go through SparkSubmitOperator against the Spark connection
  `tagrecall_spark` (a local master by default; a cluster is another connection), with the
  project's code shipped as `--py-files dist/tagrecall.zip` (`make dist`). Executors that
  score with the model (export) need TensorFlow: set TAGRECALL_ARCHIVES to a packed
  virtualenv (`make env-archive`, e.g. `hdfs:///envs/tagrecall-env.tar.gz#environment`)
  and the executors run its Python (`--archives` + spark.pyspark.python).
- `tag_model` trains the user-tag model and scores every user's tags; it runs in Spark
  (the scoring is a mapInArrow), with TensorFlow on the driver and, like export, on the
  executors (TAGRECALL_ARCHIVES).
- `train` is a Python task calling tagrecall's training step directly (TensorFlow is
  imported inside the task only; no Spark). Set `tagrecall_train` to `false` to keep the
  current model.
- `profiles` has depends_on_past: D's profile is D-1's decayed plus D's events.
- Steps whose inputs are not there yet skip with a reason (`--if-ready`): publish when no
  Redis is configured, evaluate on the first day, triples, train and tag_model on the first
  days.
- Each task declares the tables it reads and writes as Assets, so the asset view shows the
  lineage from the raw landing to user_top_tags and Redis.

Settings, each an Airflow Variable or else an environment variable, with working
defaults: `tagrecall_warehouse` / TAGRECALL_WAREHOUSE, `tagrecall_raw` / TAGRECALL_RAW,
`tagrecall_format` / TAGRECALL_FORMAT (parquet), `tagrecall_config` / TAGRECALL_CONFIG (a
TOML file, optional), `tagrecall_code` / TAGRECALL_CODE (the folder holding jobs/, whose
step files are the applications submitted), `tagrecall_py_files` / TAGRECALL_PY_FILES
(dist/tagrecall.zip there), `tagrecall_train` / TAGRECALL_TRAIN (true). Deployment
settings read when the file is parsed: TAGRECALL_SPARK_CONN, TAGRECALL_SCHEDULE_TZ,
TAGRECALL_ARCHIVES (with TAGRECALL_ARCHIVE_PYTHON, the executors' Python inside it, and
TAGRECALL_DRIVER_PYTHON, the driver's in client mode), TAGRECALL_JARS (jars for every
Spark task's --jars; by default Delta Lake's, when `tagrecall delta-jars` has fetched them,
so `tagrecall_format = delta` works), TAGRECALL_DRIVER_JAVA_OPTIONS (the
driver JVM's spark.driver.extraJavaOptions, e.g. ``-XX:SharedArchiveFile=`` the class
archive `tagrecall class-archive` records in the workers' environment: each task's driver
starts seconds faster). Redis: TAGRECALL_REDIS_URL and TAGRECALL_REDIS_PASSWORD in the
workers' environment, or publish.redis_url in the config.

This file imports Airflow, tagrecall's table catalog and the list of Delta's jars (pure
Python) only: no Spark, no TensorFlow, no step module at parse time.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Asset, CronDataIntervalTimetable, dag, task

from jobs.common import delta
from schemas.catalog import TABLES

REPO = Path(__file__).resolve().parents[1]
SPARK_CONN = os.environ.get("TAGRECALL_SPARK_CONN", "tagrecall_spark")
SCHEDULE_TZ = os.environ.get("TAGRECALL_SCHEDULE_TZ", "UTC")
ARCHIVES = os.environ.get("TAGRECALL_ARCHIVES", "")
ARCHIVE_PYTHON = os.environ.get("TAGRECALL_ARCHIVE_PYTHON", "./environment/bin/python")
# In client deploy mode the driver runs beside Airflow, where the archive is not unpacked.
DRIVER_PYTHON = os.environ.get("TAGRECALL_DRIVER_PYTHON", sys.executable)
DRIVER_JAVA_OPTIONS = os.environ.get("TAGRECALL_DRIVER_JAVA_OPTIONS", "")
# The driver's JVM has started when a step runs under spark-submit: Delta's jars go on
# --jars (to the driver and, through Spark's file server, the executors).
JARS = os.environ.get("TAGRECALL_JARS", ",".join(map(str, delta.fetched_jars())))


def _setting(name: str, default: str) -> str:
    """A Jinja expression: the Airflow Variable tagrecall_<name>, else $TAGRECALL_<NAME>, else default.
    Rendered when the task runs, so parsing never reads the metadata database."""
    fallback = os.environ.get(f"TAGRECALL_{name.upper()}", default).replace("'", "\\'")
    return f"{{{{ var.value.get('tagrecall_{name}', '{fallback}') }}}}"


WAREHOUSE = _setting("warehouse", str(REPO / "airflow-data" / "warehouse"))
RAW = _setting("raw", str(REPO / "airflow-data" / "raw"))
FORMAT = _setting("format", "parquet")
CONFIG = _setting("config", "")
CODE = _setting("code", str(REPO))
PY_FILES = _setting("py_files", str(REPO / "dist" / "tagrecall.zip"))
TRAIN = _setting("train", "true")
# The interval's start arrives in UTC; its date there is the day before for zones east of UTC.
LOCAL_START = f"data_interval_start.in_timezone('{SCHEDULE_TZ}')"
DAY = f"{{{{ {LOCAL_START} | ds }}}}"
DAY_BEFORE = f"{{{{ macros.ds_add({LOCAL_START} | ds, -1) }}}}"
COMMON = ["--warehouse", WAREHOUSE, "--raw", RAW, "--format", FORMAT, "--config", CONFIG]


def table_asset(name: str) -> Asset:
    return Asset(name=f"tagrecall.{name}", uri=f"tagrecall://warehouse/{name}", group="tagrecall")


RAW_LANDING = [Asset(name=f"tagrecall.raw.{s}", uri=f"tagrecall://raw/{s}", group="tagrecall")
               for s in ("events", "articles", "users")]
REDIS = Asset(name="tagrecall.redis", uri="tagrecall://redis/current", group="tagrecall")
MODEL = Asset(name="tagrecall.model", uri="tagrecall://warehouse/models/current", group="tagrecall")
# What each step reads: the lineage edges of the asset view (DESIGN.md, "One day, end to end").
READS = {
    "ingest": RAW_LANDING,
    "profiles": ["events", "articles"],
    "index": ["events", "articles"],
    "triples": ["events", "articles", "user_tag_profile", "tag_index", "tag_stats", "users"],
    "train": ["training_triples"],
    "tag_model": ["tag_examples", "user_tag_profile", "users"],
    "export": ["user_tag_profile", "users", "tag_stats", "tag_index", "articles", "user_tag_scores", "recall_eval",
               MODEL],
    "publish": ["user_top_tags", "tag_index", "tag_stats"],
    "vacuum": [],
    "evaluate": ["user_top_tags", "model_top_tags", "user_tag_scores", "user_tag_profile", "tag_stats",
                 "tag_index", "events", "articles"],
}


def inlets(step: str) -> list[Asset]:
    return [a if isinstance(a, Asset) else table_asset(a) for a in READS[step]]


def outlets(step: str) -> list[Asset]:
    extra = {"train": [MODEL], "publish": [REDIS]}.get(step, [])
    return [table_asset(t.name) for t in TABLES.values() if t.written_by == step] + extra


def spark_step(step: str, date: str = DAY, extra: tuple[str, ...] = (), application: str = "",
               **kwargs) -> SparkSubmitOperator:
    conf = {"spark.pyspark.python": ARCHIVE_PYTHON, "spark.pyspark.driver.python": DRIVER_PYTHON} if ARCHIVES else {}
    if DRIVER_JAVA_OPTIONS:
        conf["spark.driver.extraJavaOptions"] = DRIVER_JAVA_OPTIONS
    packed = {"archives": ARCHIVES} if ARCHIVES else {}
    if JARS:
        packed["jars"] = JARS
    return SparkSubmitOperator(
        task_id=step,
        conn_id=SPARK_CONN,
        application=application or f"{CODE}/jobs/{step}.py",
        py_files=PY_FILES,
        application_args=[*(["--date", date] if date else []), *extra, *COMMON],
        name=f"tagrecall-{step}-{date}",
        inlets=inlets(step),
        outlets=outlets(step),
        conf=conf or None,
        **packed,
        **kwargs,
    )


@task(inlets=inlets("train"), outlets=outlets("train"))
def train(date: str, warehouse: str, raw: str, table_format: str, config: str, enabled: str) -> str:
    """Fit and gate D's model in the worker (no Spark); TensorFlow is imported here only."""
    if enabled.strip().lower() in ("false", "0", "no", "off"):
        return f"training disabled by tagrecall_train={enabled!r}; the current model stays"
    from jobs import train as train_step
    from jobs.common.dates import parse_date
    from jobs.common.entry import describe
    from schemas.config import load_config

    settings = load_config(config or None, overrides={"storage": {"warehouse": warehouse, "raw": raw,
                                                                  "format": table_format}})
    return describe(train_step.STEP.invoke(None, settings, parse_date(date), if_ready=True))


@dag(
    dag_id="tagrecall_daily",
    description="tagrecall: logs -> profiles, index, triples, model, top tags per user, Redis, evaluation",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone=SCHEDULE_TZ),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["tagrecall", "spark", "recall"],
    doc_md=__doc__,
    default_args={"owner": "tagrecall", "retries": 2, "retry_delay": dt.timedelta(minutes=5),
                  "retry_exponential_backoff": True, "max_retry_delay": dt.timedelta(minutes=30)},
)
def tagrecall_daily():
    ingest = spark_step("ingest")
    profiles = spark_step("profiles", depends_on_past=True)
    index = spark_step("index")
    triples = spark_step("triples", extra=("--if-ready",))
    trained = train(date=DAY, warehouse=WAREHOUSE, raw=RAW, table_format=FORMAT, config=CONFIG, enabled=TRAIN)
    tag_model = spark_step("tag_model", extra=("--if-ready",))
    export = spark_step("export")
    publish = spark_step("publish", extra=("--if-ready",))
    evaluate = spark_step("evaluate", date=DAY_BEFORE, extra=("--if-ready",))
    vacuum = spark_step("vacuum", date="", extra=("vacuum",), application=f"{CODE}/jobs/common/maintenance.py")

    ingest >> profiles >> index >> triples >> evaluate >> trained >> tag_model >> export >> publish >> vacuum


tagrecall_daily()
