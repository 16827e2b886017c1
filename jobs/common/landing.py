"""The raw landing zone: what upstream exports, one folder per source and day.

Layout: ``<raw>/<source>/dt=<D>/`` for the sources ``events``, ``articles`` and ``users``,
holding JSON lines files (default) or Parquet files (``storage.raw_format``).
Each record is returned as a string ``raw`` exactly as received (JSON lines) or as its
JSON rendering (Parquet), so a refused record can be kept as it came.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.common.storage import LANDED_SOURCES, FileSystem, MissingPartitionError
from schemas.catalog import absolute_uri
from schemas.config import Config

SOURCES = LANDED_SOURCES


def raw_partition_location(raw_root: str, source: str, date: str) -> str:
    return f"{absolute_uri(raw_root).rstrip('/')}/{source}/dt={date}"


def raw_dates(spark: SparkSession, config: Config, source: str) -> list[str]:
    """Dates with a landed partition of ``source``, sorted."""
    root = f"{absolute_uri(config.storage.raw).rstrip('/')}/{source}"
    names = FileSystem(spark).list_names(root)
    return [n[3:] for n in names if n.startswith("dt=")]


def read_raw_records(spark: SparkSession, config: Config, source: str, date: str) -> DataFrame:
    """One row per landed record of ``source`` on ``date``, column ``raw`` (string)."""
    location = raw_partition_location(config.storage.raw, source, date)
    if not FileSystem(spark).exists(location):
        raise MissingPartitionError(
            f"raw {source} for {date} not found under {location}: was the upstream export "
            "delayed, or is --raw pointing at the wrong place?")
    if config.storage.raw_format == "parquet":
        df = spark.read.parquet(location)
        return df.select(F.to_json(F.struct(*df.columns)).alias("raw"))
    # The text reader keeps every line, malformed or not; parsing happens in the step.
    return spark.read.option("recursiveFileLookup", "true").text(location).withColumnRenamed("value", "raw")
