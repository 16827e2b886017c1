"""Upkeep of Delta tables: VACUUM (``tagrecall vacuum``, the DAG's vacuum task) and the
compaction of a day's small files (``tagrecall compact``), both through Delta's own
commands. A Parquet warehouse needs neither: each write replaces a day's folder whole, so
no file outlives its day's rewrite, and a day is written once, by one job, as few files.

VACUUM deletes the files no version of the last ``storage.vacuum_retain_hours`` needs:
days written again leave their old files behind until then (readers never see them: they
go through the Delta log), and time travel (``read_partition(..., version=N)``) reaches
back as far as that. Compaction (OPTIMIZE) rewrites one day's files as few large ones in a
new version; the rows are the same, so readers of the current version see no change.
"""

from __future__ import annotations

import datetime as dt
import logging

from pyspark.sql import SparkSession

from jobs.common.session import spark_settings
from jobs.common.storage import Warehouse
from schemas.catalog import PARTITION_COLUMN, TABLES
from schemas.config import Config

log = logging.getLogger(__name__)

# Delta refuses a retention under its safety interval (7 days) unless this check is off;
# tagrecall's retention is a setting, and each run of a step reads the current version only.
RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"


def _require_delta(config: Config, command: str) -> None:
    if config.storage.format != "delta":
        raise ValueError(f"`tagrecall {command}` is for Delta tables, and storage.format is "
                         f"{config.storage.format!r}: a Parquet warehouse replaces each day's folder whole, so it "
                         "keeps no old files and needs no compaction. Pass --format delta for a Delta warehouse.")


def _tables(wh: Warehouse, names: list[str] | None) -> list[str]:
    unknown = sorted(set(names or []) - set(TABLES))
    if unknown:
        raise ValueError(f"unknown tables {', '.join(unknown)}; known: {', '.join(TABLES)}")
    return [n for n in (names or list(TABLES)) if wh.is_delta_table(n)]


# Under this retention a VACUUM can delete the files of a write still running (FULL) or of
# a version a running step or training has planned but not read yet (both modes).
SAFE_RETAIN_HOURS = 24.0


def vacuum(spark: SparkSession, config: Config, retain_hours: float | None = None,
           names: list[str] | None = None, full: bool = False, unsafe_retention: bool = False) -> list[str]:
    """VACUUM each Delta table of the warehouse (or ``names``), keeping what the versions of
    the last ``retain_hours`` (default storage.vacuum_retain_hours) need. One line per table.

    LITE by default: the files to delete come from the Delta log's remove actions, with no
    listing of the table's folders (on 2 cores, 14 s a small table against 109 s for a full
    VACUUM listing with Spark's default parallelism). ``full`` lists the folders too, so it
    also deletes files no commit ever named (those of writes killed before their commit);
    Delta asks for it when the log no longer reaches back over the retention."""
    _require_delta(config, "vacuum")
    hours = config.storage.vacuum_retain_hours if retain_hours is None else retain_hours
    if hours < 0:
        raise ValueError(f"--retain-hours must be >= 0, got {hours}")
    if hours < SAFE_RETAIN_HOURS and not unsafe_retention:
        raise ValueError(f"vacuum: a retention of {hours:g} h (under {SAFE_RETAIN_HOURS:g} h) can delete the files "
                         "of a write still running or of a version a running step is about to read. Keep "
                         "storage.vacuum_retain_hours at 24 or more, or pass --unsafe-retention when no step "
                         "and no training is running on this warehouse")
    wh = Warehouse(spark, config)
    lines = []
    mode = "FULL" if full else "LITE"
    # The listing of a full VACUUM runs as a Spark job of this many tasks (Spark's default,
    # 10,000, is meant for tables of millions of files).
    settings = {RETENTION_CHECK: "false",
                "spark.sql.sources.parallelPartitionDiscovery.parallelism": str(config.spark.shuffle_partitions)}
    with spark_settings(spark, settings):
        for name in _tables(wh, names):
            spark.sql(f"VACUUM delta.`{wh.location(name)}` RETAIN {hours:g} HOURS {mode}").collect()
            lines.append(f"{name}: vacuumed ({mode.lower()}), keeping {hours:g} h of versions")
            log.info("%s", lines[-1])
    return lines


def compact(spark: SparkSession, config: Config, date: dt.date, names: list[str] | None = None) -> list[str]:
    """OPTIMIZE day ``date`` of each Delta table (or ``names``) that holds it: its small
    files rewritten as few, the rows unchanged. One line per table."""
    _require_delta(config, "compact")
    wh = Warehouse(spark, config)
    day = date.isoformat()
    lines = []
    for name in _tables(wh, names):
        if not wh.has_partition(name, day):
            continue
        metrics = spark.sql(f"OPTIMIZE delta.`{wh.location(name)}` WHERE {PARTITION_COLUMN} = '{day}'") \
            .select("metrics.numFilesAdded", "metrics.numFilesRemoved").first()
        lines.append(f"{name} {day}: {metrics[1]} files rewritten as {metrics[0]}")
        log.info("%s", lines[-1])
    return lines


def main(argv: list[str] | None = None) -> int:
    """spark-submit entry point (the DAG's vacuum task): ``vacuum [--retain-hours H]``.
    On a Parquet warehouse it says there is nothing to do and succeeds, so one DAG serves
    both formats."""
    import argparse

    from jobs.common.entry import add_common_options, config_from_args, configure_logging
    from jobs.common.session import build_session

    parser = argparse.ArgumentParser(prog="maintenance.py")
    parser.add_argument("command", choices=("vacuum",))
    parser.add_argument("--retain-hours", type=float)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--unsafe-retention", action="store_true")
    add_common_options(parser)
    args = parser.parse_args(argv)
    configure_logging(False)
    config = config_from_args(args)
    if config.storage.format != "delta":
        log.info("vacuum: the warehouse is %s, which keeps no old files: nothing to do", config.storage.format)
        return 0
    vacuum(build_session(config, "tagrecall-vacuum", set_master=False), config, args.retain_hours, full=args.full,
           unsafe_retention=args.unsafe_retention)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
