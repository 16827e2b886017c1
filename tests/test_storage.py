"""Partition storage, in both table formats where the format matters: exact partition
replacement, atomic writes, clear errors; Delta's day records, concurrent commits, time
travel, VACUUM and compaction; readers outside Spark through the Delta log."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading

import pytest
from pyspark.sql import functions as F

from jobs.common.storage import MissingPartitionError, Warehouse
from schemas.config import load_config


def _ids(wh, day):
    return sorted(r["id"] for r in wh.read_partition("events", day).select("id").collect())


@pytest.fixture
def wh(spark, make_config):
    return Warehouse(spark, make_config())


@pytest.fixture
def any_wh(spark, make_config, table_format):
    """A warehouse in each table format in turn."""
    return Warehouse(spark, make_config(storage={"format": table_format}))


@pytest.fixture
def delta_wh(delta, make_config):
    return Warehouse(delta, make_config(storage={"format": "delta"}))


def test_write_replaces_exactly_its_partition(spark, any_wh, tmp_path):
    wh = any_wh
    wh.write_partition(spark.range(3), "events", "2026-11-01")
    wh.write_partition(spark.range(5), "events", "2026-11-02")
    other = tmp_path / "warehouse" / "events" / "dt=2026-11-01"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in other.iterdir()}
    wh.write_partition(spark.range(10, 12), "events", "2026-11-02")
    assert _ids(wh, "2026-11-02") == [10, 11]
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in other.iterdir()} == before
    assert wh.partitions("events") == ["2026-11-01", "2026-11-02"]


def test_a_write_that_fails_midway_leaves_the_old_partition(spark, any_wh):
    wh = any_wh
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


def test_missing_partition_names_the_path_and_the_step(any_wh):
    wh = any_wh
    with pytest.raises(MissingPartitionError,
                       match=r"events for 2026-11-05 not found at .*/events/dt=2026-11-05: run `tagrecall ingest --date 2026-11-05`"):
        wh.read_partition("events", "2026-11-05")


def test_partition_column_is_refused(spark, any_wh):
    wh = any_wh
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


def test_run_reports_round_trip(any_wh):
    wh = any_wh
    wh.write_run_report("ingest", "2026-11-01", {"rows": 3, "nested": {"a": [1, 2]}})
    assert wh.read_run_report("ingest", "2026-11-01") == {"rows": 3, "nested": {"a": [1, 2]}}


def test_delta_without_its_jars_fails_at_once_naming_the_command_that_fetches_them(tmp_path):
    code = ("from schemas.config import load_config\n"
            "from jobs.common.session import build_session\n"
            "build_session(load_config(overrides={'storage': {'format': 'delta'}}), 'no-jars')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TAGRECALL_DELTA_HOME": str(tmp_path / "nothing-fetched")})
    assert proc.returncode != 0
    assert "DeltaUnavailableError" in proc.stderr and "io.delta:delta-spark_4.2_2.13" in proc.stderr
    assert "`tagrecall delta-jars`" in proc.stderr and "--format parquet" in proc.stderr
    assert "Java gateway" not in proc.stderr  # refused before a JVM starts


def test_an_empty_day_is_written_and_read_back_empty(spark, any_wh):
    wh = any_wh
    wh.write_partition(spark.range(3), "events", "2026-11-01")
    wh.write_partition(spark.range(0), "events", "2026-11-02")
    assert wh.has_partition("events", "2026-11-02") and not wh.has_partition("events", "2026-11-03")
    assert wh.row_count("events", "2026-11-02") == 0 and wh.read_partition("events", "2026-11-02").count() == 0
    wh.write_partition(spark.range(0), "events", "2026-11-01")  # a day emptied by its re-run
    assert wh.partitions("events") == ["2026-11-01", "2026-11-02"] and wh.row_count("events", "2026-11-01") == 0


def _rows(df) -> list[int]:
    return sorted(r[0] for r in df.collect())


def test_readers_outside_spark_read_exactly_the_current_rows_of_a_day_written_twice(spark, make_config, table_format):
    """Training's reader (models/tables.py): on Delta the first write's files stay on disk
    until VACUUM, and must not be read."""
    import pyarrow.compute as pc

    from models import tables

    config = make_config(storage={"format": table_format})
    wh = Warehouse(spark, config)
    days = [dt.date(2026, 11, 1), dt.date(2026, 11, 2)]
    wh.write_partition(spark.range(0, 50, numPartitions=2), "training_triples", "2026-11-01")
    wh.write_partition(spark.range(100, 130, numPartitions=3), "training_triples", "2026-11-02")
    wh.write_partition(spark.range(200, 207, numPartitions=2), "training_triples", "2026-11-02")  # re-run
    found = tables.partitions(config, "training_triples", days + [dt.date(2026, 11, 3)])
    assert list(found) == ["2026-11-01", "2026-11-02"]
    ids = pc.sort_indices(tables.dataset([found["2026-11-02"]]).to_table(), [("id", "ascending")])
    assert tables.dataset([found["2026-11-02"]]).to_table().column("id").take(ids).to_pylist() == list(range(200, 207))
    assert tables.dataset(list(found.values())).count_rows() == 57
    day2 = wh.location("training_triples").removeprefix("file://") + "/dt=2026-11-02"
    on_disk = [f for f in os.listdir(day2) if f.endswith(".parquet")]
    assert len(on_disk) == (5 if table_format == "delta" else 2)  # Delta keeps the replaced files until VACUUM


def test_delta_readers_outside_spark_refuse_a_percent_in_the_path_and_stray_records_are_no_days(delta, tmp_path):
    from models import tables

    config = load_config(overrides={"storage": {"warehouse": str(tmp_path / "wh a%20b"), "format": "delta"}})
    wh = Warehouse(delta, config)
    wh.write_partition(delta.range(0, 6, numPartitions=2), "training_triples", "2026-11-01")
    with pytest.raises(ValueError, match="cannot open a path holding '%'"):
        tables.partitions(config, "training_triples", [dt.date(2026, 11, 1)])
    # a record whose write was killed before its rename
    (tmp_path / "wh a%20b" / "training_triples" / "_tagrecall_days" / ".2026-11-02.deadbeef").write_text("{}")
    assert wh.partitions("training_triples") == ["2026-11-01"]


def test_delta_writes_of_two_days_at_once_both_land(delta_wh, delta):
    """Two commits racing on one table, the first of them creating it: both land."""
    errors = []

    def write(day, start):
        try:
            delta_wh.write_partition(delta.range(start, start + 20, numPartitions=2), "events", day)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    for _ in range(2):  # the first round creates the table, the second replaces both days
        threads = [threading.Thread(target=write, args=(d, s)) for d, s in (("2026-11-01", 0), ("2026-11-02", 100))]
        [t.start() for t in threads]
        [t.join() for t in threads]
    assert errors == []
    assert _rows(delta_wh.read_partition("events", "2026-11-01")) == list(range(20))
    assert _rows(delta_wh.read_partition("events", "2026-11-02")) == list(range(100, 120))


def test_delta_writes_of_one_day_at_once_never_leave_a_mixed_day(delta_wh, delta):
    delta_wh.write_partition(delta.range(5), "events", "2026-11-01")
    outcomes = {}

    def write(label, start):
        try:
            delta_wh.write_partition(delta.range(start, start + 300, numPartitions=3), "events", "2026-11-01")
            outcomes[label] = "ok"
        except Exception as exc:  # noqa: BLE001 - a refused commit is allowed, a mixed day is not
            outcomes[label] = type(exc).__name__

    threads = [threading.Thread(target=write, args=(label, s)) for label, s in (("a", 1000), ("b", 5000))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert "ok" in outcomes.values()
    assert _rows(delta_wh.read_partition("events", "2026-11-01")) in (list(range(1000, 1300)), list(range(5000, 5300)))


def test_delta_time_travel_reads_a_day_as_an_earlier_version_held_it(delta_wh, delta):
    delta_wh.write_partition(delta.range(3), "events", "2026-11-01")
    first = delta_wh.table_version("events")
    delta_wh.write_partition(delta.range(7, 9), "events", "2026-11-01")
    assert delta_wh.table_version("events") == first + 1
    assert _rows(delta_wh.read_partition("events", "2026-11-01", version=first)) == [0, 1, 2]
    assert _rows(delta_wh.read_partition("events", "2026-11-01")) == [7, 8]


def test_time_travel_is_refused_on_parquet(wh):
    with pytest.raises(ValueError, match="needs a Delta table"):
        wh.read_partition("events", "2026-11-01", version=0)


def test_vacuum_deletes_the_replaced_files_and_compaction_keeps_the_rows(delta_wh, delta, make_config, tmp_path):
    from jobs.common.maintenance import compact, vacuum

    config = make_config(storage={"format": "delta"})
    delta_wh.write_partition(delta.range(0, 40, numPartitions=8), "events", "2026-11-01")
    delta_wh.write_partition(delta.range(50, 90, numPartitions=8), "events", "2026-11-01")
    folder = tmp_path / "warehouse" / "events" / "dt=2026-11-01"
    assert len(list(folder.glob("*.parquet"))) == 16
    assert compact(delta, config, dt.date(2026, 11, 1), ["events"]) == ["events 2026-11-01: 8 files rewritten as 1"]
    assert _rows(delta_wh.read_partition("events", "2026-11-01")) == list(range(50, 90))
    with pytest.raises(ValueError, match="under 24 h.*--unsafe-retention"):
        vacuum(delta, config, retain_hours=0)
    assert vacuum(delta, config, retain_hours=0, unsafe_retention=True)[0].startswith("events: vacuumed (lite)")
    assert len(list(folder.glob("*.parquet"))) == 1  # the first write's 8, the compacted 8: gone
    (folder / "part-99999-never-committed.snappy.parquet").write_bytes(b"PAR1")  # a write killed before its commit
    os.utime(folder / "part-99999-never-committed.snappy.parquet", (0, 0))
    vacuum(delta, config, retain_hours=0, unsafe_retention=True)
    assert (folder / "part-99999-never-committed.snappy.parquet").exists()  # LITE knows the log's files only
    assert vacuum(delta, config, retain_hours=0, full=True, unsafe_retention=True)[0].startswith("events: vacuumed (full)")
    assert len(list(folder.glob("*.parquet"))) == 1
    assert _rows(delta_wh.read_partition("events", "2026-11-01")) == list(range(50, 90))
    assert delta_wh.partitions("events") == ["2026-11-01"]


def test_vacuum_and_compact_refuse_a_parquet_warehouse(spark, make_config):
    from jobs.common.maintenance import compact, vacuum

    with pytest.raises(ValueError, match="for Delta tables.*--format delta"):
        vacuum(spark, make_config())
    with pytest.raises(ValueError, match="for Delta tables"):
        compact(spark, make_config(), dt.date(2026, 11, 1))


def test_config_format_delta_is_accepted_by_the_config():
    assert load_config(overrides={"storage": {"format": "delta"}}).storage.format == "delta"
