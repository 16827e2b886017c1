"""Partition storage: exact partition replacement, atomic swaps, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pyspark.sql import functions as F

from jobs.common.session import DeltaUnavailableError, check_delta_available
from jobs.common.storage import MissingPartitionError, Warehouse
from schemas.config import load_config


def _ids(wh, day):
    return sorted(r["id"] for r in wh.read_partition("events", day).select("id").collect())


@pytest.fixture
def wh(spark, make_config):
    return Warehouse(spark, make_config())


def test_write_replaces_exactly_its_partition(spark, wh, tmp_path):
    wh.write_partition(spark.range(3), "events", "2026-11-01")
    wh.write_partition(spark.range(5), "events", "2026-11-02")
    other = tmp_path / "warehouse" / "events" / "dt=2026-11-01"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in other.iterdir()}
    wh.write_partition(spark.range(10, 12), "events", "2026-11-02")
    assert _ids(wh, "2026-11-02") == [10, 11]
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in other.iterdir()} == before
    assert wh.partitions("events") == ["2026-11-01", "2026-11-02"]


def test_a_write_that_fails_midway_leaves_the_old_partition(spark, wh):
    wh.write_partition(spark.range(4), "events", "2026-11-01")
    # Division by zero raises under ANSI mode once the job reaches id 50_000, after
    # other tasks may already have written files.
    failing = spark.range(0, 100_000, numPartitions=4).withColumn("x", F.lit(1) / (F.col("id") - 50_000))
    with pytest.raises(Exception, match="DIVIDE_BY_ZERO"):
        wh.write_partition(failing, "events", "2026-11-01")
    assert _ids(wh, "2026-11-01") == [0, 1, 2, 3]


def test_a_job_killed_between_the_renames_is_recovered(spark, wh, monkeypatch):
    wh.write_partition(spark.range(4), "events", "2026-11-01")
    calls = []
    real_rename = wh.fs.rename

    def rename_then_die(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # old partition moved aside, new one not yet in place
            raise KeyboardInterrupt("killed")
        real_rename(src, dst)

    monkeypatch.setattr(wh.fs, "rename", rename_then_die)
    with pytest.raises(KeyboardInterrupt):
        wh.write_partition(spark.range(100, 103), "events", "2026-11-01")
    monkeypatch.setattr(wh.fs, "rename", real_rename)
    assert _ids(wh, "2026-11-01") == [0, 1, 2, 3]
    wh.write_partition(spark.range(100, 103), "events", "2026-11-01")
    assert _ids(wh, "2026-11-01") == [100, 101, 102]


def test_missing_partition_names_the_path_and_the_step(wh):
    with pytest.raises(MissingPartitionError,
                       match=r"events for 2026-11-05 not found at .*/events/dt=2026-11-05: run `tagrecall ingest --date 2026-11-05`"):
        wh.read_partition("events", "2026-11-05")


def test_partition_column_is_refused(spark, wh):
    with pytest.raises(ValueError, match="drop the 'dt' column"):
        wh.write_partition(spark.range(1).withColumn("dt", F.lit("x")), "events", "2026-11-01")


def _jobs_in(spark, group: str, fn):
    """(fn's result, the Spark jobs it started), run under job group ``group``. The status
    tracker is fed by a listener, asynchronously: its queue is drained before asking, or a
    job just run could be missing and "no job" pass by chance."""
    sc = spark.sparkContext
    sc.setJobGroup(group, group)
    try:
        out = fn()
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    sc._jsc.sc().listenerBus().waitUntilEmpty()
    return out, list(sc.statusTracker().getJobIdsForGroup(group))


def test_row_count_reads_the_footers_without_a_job_and_spark_counts_large_partitions(spark, wh, monkeypatch):
    from jobs.common import storage

    # 13 non-empty partitions: 13 files.
    wh.write_partition(spark.range(0, 12_993, numPartitions=13), "events", "2026-11-01")
    wh.write_partition(spark.range(0, 40, numPartitions=3).withColumn("user_id", (F.col("id") % 7).cast("string")),
                       "user_tag_profile", "2026-11-01", storage.Bucketing("user_id", 4))
    wh.write_partition(spark.range(0), "tag_stats", "2026-11-01")
    assert wh.bucketing("user_tag_profile", "2026-11-01") == storage.Bucketing("user_id", 4)
    counted, jobs = _jobs_in(spark, "footers", lambda: [wh.row_count(t, "2026-11-01") for t in
                                                         ("events", "user_tag_profile", "tag_stats")])
    assert counted == [12_993, 40, 0] and jobs == []
    monkeypatch.setattr(storage, "FOOTER_COUNT_MAX_FILES", 12)  # 13 files: Spark counts them
    counted, jobs = _jobs_in(spark, "spark", lambda: wh.row_count("events", "2026-11-01"))
    assert counted == 12_993 and jobs
    with pytest.raises(MissingPartitionError, match="tag_index for 2026-11-02 not found"):
        wh.row_count("tag_index", "2026-11-02")


def test_reads_take_the_schema_from_the_footer_without_a_job_and_equal_spark_s_own(spark, wh, tmp_path):
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [("u1", {"age": "30"}, dt.datetime(2026, 11, 1, 8), [("a", 0.5)], 3, None),
            ("u2", {}, dt.datetime(2026, 11, 1, 9), [], 1, 2.5)]
    df = spark.createDataFrame(rows, "user_id string, features map<string,string>, updated_time timestamp, "
                                     "tags array<struct<tag:string,weight:double>>, n int, x double")
    wh.write_partition(df.repartition(2), "users", "2026-11-01")
    read, jobs = _jobs_in(spark, "read", lambda: wh.read_partition("users", "2026-11-01"))
    assert jobs == []
    path = str(tmp_path / "warehouse" / "users" / "dt=2026-11-01")
    assert read.schema == spark.read.parquet(path).schema
    assert sorted(map(tuple, read.collect())) == sorted(map(tuple, spark.read.parquet(path).collect()))
    # Files another writer made carry no Spark schema: Spark infers it, as before.
    other = tmp_path / "warehouse" / "tag_stats" / "dt=2026-11-01"
    other.mkdir(parents=True)
    pq.write_table(pa.table({"tag": ["a", "b"], "impressions": [3, 4]}), other / "part-0.parquet")
    assert wh.read_partition("tag_stats", "2026-11-01").schema == spark.read.parquet(str(other)).schema
    assert wh.row_count("tag_stats", "2026-11-01") == 2


def test_row_count_of_a_truncated_file_names_the_file(spark, wh, tmp_path):
    from jobs.common.storage import unreadable_file

    wh.write_partition(spark.range(0, 100, numPartitions=2), "events", "2026-11-01")
    victim = sorted((tmp_path / "warehouse" / "events" / "dt=2026-11-01").glob("*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[:20])
    with pytest.raises(OSError) as err:
        wh.row_count("events", "2026-11-01")
    found = unreadable_file(err.value, str(tmp_path / "warehouse"))
    assert found is not None and found[0].endswith(victim.name) and found[1:] == ("table", "events", "2026-11-01")


def test_run_reports_round_trip(wh):
    wh.write_run_report("ingest", "2026-11-01", {"rows": 3, "nested": {"a": [1, 2]}})
    assert wh.read_run_report("ingest", "2026-11-01") == {"rows": 3, "nested": {"a": [1, 2]}}


def _delta_probe(tmp_path) -> str | None:
    """Start a Delta session in a child process; None when it works, else why not."""
    code = ("from schemas.config import load_config\n"
            "from jobs.common.session import build_session\n"
            "c = load_config(overrides={{'storage': {{'format': 'delta'}}, 'spark': {{'master': 'local[1]'}}}})\n"
            "s = build_session(c, 'delta-probe')\n"
            "s.range(1).write.format('delta').save({!r})\n".format(str(tmp_path / "probe")))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    return None if proc.returncode == 0 else proc.stderr


@pytest.fixture(scope="module")
def delta_unavailable(tmp_path_factory):
    return _delta_probe(tmp_path_factory.mktemp("delta"))


def test_delta_fails_clearly_when_its_jars_cannot_be_resolved(delta_unavailable):
    if delta_unavailable is None:
        pytest.skip("Delta's jars resolved here: the failure path cannot be observed")
    assert "DeltaUnavailableError" in delta_unavailable
    assert "--format delta needs the Delta Lake jars" in delta_unavailable
    assert "--format parquet" in delta_unavailable


def test_delta_check_refuses_a_session_without_delta(spark):
    with pytest.raises(DeltaUnavailableError, match="io.delta.tables.DeltaTable is not on the classpath"):
        check_delta_available(spark)


def test_delta_partitions_round_trip(delta_unavailable, tmp_path):
    if delta_unavailable is not None:
        pytest.skip("Delta's jars cannot be resolved from Maven on this machine "
                    "(no network access to Maven Central); see test above for the error users get")
    code = f"""
from schemas.config import load_config
from jobs.common.session import build_session
from jobs.common.storage import Warehouse
c = load_config(overrides={{'storage': {{'format': 'delta', 'warehouse': {str(tmp_path / 'wh')!r}}},
                           'spark': {{'master': 'local[1]'}}}})
s = build_session(c, 'delta-test')
wh = Warehouse(s, c)
wh.write_partition(s.range(3), 'events', '2026-11-01')
wh.write_partition(s.range(5), 'events', '2026-11-02')
wh.write_partition(s.range(10, 12), 'events', '2026-11-02')
assert sorted(r.id for r in wh.read_partition('events', '2026-11-01').collect()) == [0, 1, 2]
assert sorted(r.id for r in wh.read_partition('events', '2026-11-02').collect()) == [10, 11]
assert wh.partitions('events') == ['2026-11-01', '2026-11-02']
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_config_format_delta_is_accepted_by_the_config():
    assert load_config(overrides={"storage": {"format": "delta"}}).storage.format == "delta"
