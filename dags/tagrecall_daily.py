"""tagrecall_daily: the daily chain of tagrecall for the day D = data_interval_start.

One run per day, on a data-interval timetable (midnight to midnight, UTC by default): the
run for D starts once D is over. Tasks, each rewriting only its own partition of D, so
retries and `airflow dags backfill` are safe:

    ingest -> profiles -> index -> triples -> train -> export -> publish -> evaluate (D-1)

- The Spark steps go through SparkSubmitOperator against the Spark connection
  `tagrecall_spark` (a local master by default; a cluster is another connection), with the
  project's code shipped as `--py-files dist/tagrecall.zip` (`make dist`).
- `train` runs tagrecall's Python entry point in the worker (TensorFlow is imported inside
  the task only; no Spark). Set `tagrecall_train` to `false` to keep the current model.
- `profiles` has depends_on_past: D's profile is D-1's decayed plus D's events.
- `publish` succeeds as "skipped" when no Redis is configured; `evaluate` scores D-1's
  recall against D's events and succeeds as "skipped" on the first day.

Settings, each an Airflow Variable or else an environment variable, with working
defaults: `tagrecall_warehouse` / TAGRECALL_WAREHOUSE, `tagrecall_raw` / TAGRECALL_RAW,
`tagrecall_format` / TAGRECALL_FORMAT (parquet), `tagrecall_config` / TAGRECALL_CONFIG (a
TOML file, optional), `tagrecall_code` / TAGRECALL_CODE (the folder holding jobs/, whose
step files are the applications submitted), `tagrecall_py_files` / TAGRECALL_PY_FILES
(dist/tagrecall.zip there), `tagrecall_train` / TAGRECALL_TRAIN (true). Redis: TAGRECALL_REDIS_URL and
TAGRECALL_REDIS_PASSWORD in the workers' environment, or publish.redis_url in the config.

This file imports Airflow only: no Spark, no TensorFlow, no tagrecall module at parse time.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG
from airflow.timetables.interval import CronDataIntervalTimetable

REPO = Path(__file__).resolve().parents[1]
SPARK_CONN = os.environ.get("TAGRECALL_SPARK_CONN", "tagrecall_spark")
SCHEDULE_TZ = os.environ.get("TAGRECALL_SCHEDULE_TZ", "UTC")


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
DAY = "{{ data_interval_start | ds }}"
DAY_BEFORE = "{{ macros.ds_add(data_interval_start | ds, -1) }}"
COMMON = ["--warehouse", WAREHOUSE, "--raw", RAW, "--format", FORMAT, "--config", CONFIG]


def train_step(date: str, warehouse: str, raw: str, table_format: str, config: str, enabled: str) -> None:
    """Runs in the Airflow worker: `tagrecall train --date D` (imports TensorFlow here only)."""
    if enabled.strip().lower() in ("false", "0", "no", "off"):
        print(f"training disabled by tagrecall_train={enabled!r}; the current model stays")
        return
    from jobs.cli import main

    code = main(["train", "--date", date, "--warehouse", warehouse, "--raw", raw, "--format", table_format,
                 "--config", config])
    if code != 0:
        raise RuntimeError(f"tagrecall train --date {date} exited with {code}; see the log above")


def spark_step(step: str, date: str = DAY, extra: tuple[str, ...] = (), **kwargs) -> SparkSubmitOperator:
    return SparkSubmitOperator(
        task_id=step,
        conn_id=SPARK_CONN,
        application=f"{CODE}/jobs/{step}.py",
        py_files=PY_FILES,
        application_args=["--date", date, *extra, *COMMON],
        name=f"tagrecall-{step}-{date}",
        **kwargs,
    )


with DAG(
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
) as dag:
    ingest = spark_step("ingest")
    profiles = spark_step("profiles", depends_on_past=True)
    index = spark_step("index")
    triples = spark_step("triples")
    train = PythonOperator(
        task_id="train",
        python_callable=train_step,
        op_kwargs={"date": DAY, "warehouse": WAREHOUSE, "raw": RAW, "table_format": FORMAT, "config": CONFIG,
                   "enabled": TRAIN},
    )
    export = spark_step("export")
    publish = spark_step("publish", extra=("--if-configured",))
    evaluate = spark_step("evaluate", date=DAY_BEFORE, extra=("--if-ready",))

    ingest >> profiles >> index >> triples >> train >> export >> publish >> evaluate
