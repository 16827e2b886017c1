"""Reading and writing one date partition of a table, and the run reports.

Tables live at ``<warehouse>/<table>/dt=<D>/`` in Parquet (default) or Delta.

Parquet writes are staged and swapped in: the new partition is written under
``<table>/_staging/``, the old one renamed aside, the new one renamed into place, the old
one deleted. A reader sees the old partition or the new one, never part of either; if a job
dies between the two renames, the next read or write of that partition puts the old one
back. Renames are atomic on local and HDFS file systems; on object stores, where they are
copies, use Delta.

Delta writes go through ``replaceWhere`` on the ``dt`` column: one transaction per
partition, atomic through the Delta log, so Delta needs none of the Parquet path's staging
and renames (a killed write leaves no commit, and the previous version stays the current
one). Writes of different days of one table commit side by side (Delta retries a commit that
raced one on another day; tagrecall retries the rare conflict of two first writes creating
a table). After its commit, a write records its day in ``<table>/_tagrecall_days/<D>``:
the Delta log keeps no day whose rows are all gone, and tagrecall's steps tell "written,
empty" from "not written" (a killed run between commit and record only leaves the day to
be written again, with the same rows). Readers outside Spark (models/tables.py) list a
day's files from the Delta log, never from its folder.

A Parquet partition is read with the schema Spark recorded in its first data file's footer,
and counted (``Warehouse.row_count``, for run reports) from its files' footers, both read in
the driver: Spark would start a job for either, a fifth of a second or so on a small day,
and a step reads and counts a dozen partitions.

A Parquet partition may be written bucketed (``Bucketing``): one file per bucket, each row
in bucket pmod(murmur3(column), count), as Spark writes a bucketed table, and the layout
named in ``_bucketing.json`` inside the partition, swapped in with its files. Plain readers
(Spark's, pyarrow's) skip files whose names start with ``_``; ``read_bucketed`` gives a
DataFrame that Spark knows to be hash-partitioned by the column, so an aggregation or a
window keyed by it runs without a shuffle, and ``Scratch.bucketed_scan`` reads several such
folders as one. Spark keeps bucket specs only in a table catalog, not for paths: writes and
reads go through tables of the session's in-memory catalog, dropped once done (the files
stay). Delta tables and sessions with a Hive metastore are written plain.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from schemas.catalog import (
    DELTA_DAYS,
    PARTITION_COLUMN,
    TABLES,
    absolute_uri,
    run_report_location,
    table,
)
from schemas.config import Config

log = logging.getLogger(__name__)

STAGING_DIR = "_staging"
BUCKETING_FILE = "_bucketing.json"
LANDED_SOURCES = ("events", "articles", "users")  # jobs/common/landing.py's layout
# Footers read one after another in the driver (Warehouse.row_count): a few milliseconds
# each on a local disk, tens on an object store, where a Spark job reads them in parallel.
FOOTER_COUNT_MAX_FILES = 64
# Where Spark's Parquet writer records the schema it wrote (ParquetReadSupport.SPARK_METADATA_KEY).
SPARK_SCHEMA_KEY = "org.apache.spark.sql.parquet.row.metadata"
# Delta: how often a write that raced another commit of the same table is tried again
# (Delta itself retries the commits it can reconcile: writes of other days).
DELTA_WRITE_ATTEMPTS = 4
_DELTA_RETRYABLE = ("ConcurrentAppend", "ProtocolChanged", "MetadataChanged", "ConcurrentTransaction",
                    "DELTA_CONCURRENT", "DELTA_PROTOCOL_CHANGED", "DELTA_METADATA_CHANGED")


def _sql_string(text: str) -> str:
    """``text`` for a single-quoted SQL string literal."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _columns_ddl(schema: StructType) -> str:
    """``schema``'s columns as a CREATE TABLE column list."""
    return ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in schema.fields)


def _catalog_table_name() -> str:
    """A fresh name for a table of the session catalog that lives for one read or write."""
    return f"tagrecall_bucketed_{uuid.uuid4().hex}"


class MissingPartitionError(FileNotFoundError):
    """An input partition a step needs does not exist."""


class UnreadableFileError(RuntimeError):
    """A file of a warehouse table cannot be read (truncated, overwritten, not Parquet);
    the message names the file and the step that rewrites it."""


# How Spark (FAILED_READ_FILE) and pyarrow's datasets name a file they could not read.
_FAILED_FILE = (re.compile(r"Encountered error while reading file (\S+?)\.?(?:\s|$)"),
                re.compile(r"Could not open Parquet input source '([^']+)'"))
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_PARTITION_FILE = re.compile(rf"/([A-Za-z0-9_]+)/{PARTITION_COLUMN}=(\d{{4}}-\d{{2}}-\d{{2}})/[^/]+$")


def _local(uri: str) -> str:
    return re.sub(r"^[a-z0-9]+:/+", "/", uri).rstrip("/")


def unreadable_file(exc: BaseException, warehouse: str, raw: str = "") -> tuple[str, str, str, str] | None:
    """(file, "table" or "landing", table or source, date) when ``exc`` is a failed read of
    a file of one of ``warehouse``'s tables or of the ``raw`` landing; None for any other
    error."""
    text = str(exc)
    roots = [("table", _local(absolute_uri(warehouse)))] + ([("landing", _local(absolute_uri(raw)))] if raw else [])
    for pattern in _FAILED_FILE:
        for found in pattern.finditer(text):
            path = found.group(1)
            where = _PARTITION_FILE.search(_local(path))
            if where is None:
                continue
            name, day = where.group(1), where.group(2)
            for kind, root in roots:
                if _local(path).startswith(root + "/") and name in (TABLES if kind == "table" else LANDED_SOURCES):
                    return path, kind, name, day
    return None


def unreadable_file_error(step: str, date: str, path: str, kind: str, name: str, day: str) -> UnreadableFileError:
    whole = ("Partitions are replaced whole, so every table is as it was before this run or as this run "
             "wrote it in full.")
    if kind == "landing":
        return UnreadableFileError(
            f"{step} {date}: the landed file {path} cannot be read (not gzip though named so, truncated, or not "
            f"the landing's format). Its records cannot be told apart, so none of {name} of {day} was taken: "
            f"replace it with a good copy from the upstream export (or move it out of the landing folder), then "
            f"run `tagrecall ingest --date {day}` again. {whole}")
    writer = table(name).written_by
    return UnreadableFileError(
        f"{step} {date}: {path} cannot be read (truncated, overwritten or not Parquet). It is a file of "
        f"{name} for {day}: rewrite that partition with `tagrecall {writer} --date {day}` (or restore it from "
        f"a backup), then run `tagrecall {step} --date {date}` again. {whole}")


@dataclass(frozen=True)
class Bucketing:
    """A partition stored as ``count`` files, hash-partitioned by ``column`` as Spark buckets."""

    column: str
    count: int

    def __post_init__(self):
        if self.count < 1:
            raise ValueError(f"bucketing by {self.column!r}: count must be >= 1, got {self.count}")


@dataclass
class FileSystem:
    """The Hadoop FileSystem behind a URI, so local, HDFS and object stores work alike."""

    spark: SparkSession

    def _path(self, uri: str):
        jvm = self.spark._jvm
        path = jvm.org.apache.hadoop.fs.Path(absolute_uri(uri))
        return path.getFileSystem(self.spark._jsc.hadoopConfiguration()), path

    def exists(self, uri: str) -> bool:
        fs, path = self._path(uri)
        return fs.exists(path)

    def rename(self, src: str, dst: str) -> None:
        fs, src_path = self._path(src)
        _, dst_path = self._path(dst)
        fs.mkdirs(dst_path.getParent())
        if not fs.rename(src_path, dst_path):
            raise OSError(f"could not rename {src} to {dst}")

    def mkdirs(self, uri: str) -> None:
        fs, path = self._path(uri)
        fs.mkdirs(path)

    def delete(self, uri: str) -> None:
        fs, path = self._path(uri)
        if fs.exists(path):
            fs.delete(path, True)

    def create_new(self, uri: str, text: str) -> bool:
        """Write a small file only if none is there: False when it exists (Hadoop's create
        without overwrite, atomic on HDFS)."""
        fs, path = self._path(uri)
        try:
            stream = fs.create(path, False)
        except Exception as exc:  # py4j: FileAlreadyExistsException from the JVM
            if "FileAlreadyExists" in str(exc) or fs.exists(path):
                return False
            raise
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()
        return True

    def list_names(self, uri: str) -> list[str]:
        fs, path = self._path(uri)
        if not fs.exists(path):
            return []
        return sorted(status.getPath().getName() for status in fs.listStatus(path))

    def write_text(self, uri: str, text: str) -> None:
        """Write a small file atomically: to a hidden temporary name, then rename."""
        fs, path = self._path(uri)
        fs.mkdirs(path.getParent())
        for status in fs.listStatus(path.getParent()):  # temporary files of writers that were killed
            if status.getPath().getName().startswith(f".{path.getName()}."):
                fs.delete(status.getPath(), False)
        tmp = self.spark._jvm.org.apache.hadoop.fs.Path(path.getParent(), f".{path.getName()}.{uuid.uuid4().hex}")
        stream = fs.create(tmp, True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()
        if fs.exists(path):
            fs.delete(path, False)
        if not fs.rename(tmp, path):
            raise OSError(f"could not write {uri}")

    def read_text(self, uri: str) -> str:
        fs, path = self._path(uri)
        stream = fs.open(path)
        try:
            reader = self.spark._jvm.java.io.BufferedReader(
                self.spark._jvm.java.io.InputStreamReader(stream, "UTF-8"))
            lines = []
            line = reader.readLine()
            while line is not None:
                lines.append(line)
                line = reader.readLine()
            return "\n".join(lines)
        finally:
            stream.close()

    # -- Parquet footers ---------------------------------------------------------------------
    def data_files(self, uri: str) -> list:
        """The FileStatus of each data file in folder ``uri``: the files Spark reads there
        (names not starting with ``_`` or ``.``)."""
        fs, path = self._path(uri)
        return [s for s in fs.listStatus(path) if s.isFile() and not s.getPath().getName().startswith(("_", "."))]

    def parquet_footer(self, status) -> _Footer:
        """The footer of one Parquet file (a FileStatus of ``data_files``), read in the
        driver: row count, schema and key-value metadata. A file whose footer cannot be read
        raises the error Spark's reader would (``unreadable_file`` finds its path in it)."""
        jvm = self.spark._jvm
        try:
            reader = jvm.org.apache.parquet.hadoop.ParquetFileReader.open(
                jvm.org.apache.parquet.hadoop.util.HadoopInputFile.fromStatus(status, self.spark._jsc.hadoopConfiguration()))
        except Exception as exc:  # py4j: the JVM's exception, e.g. "is not a Parquet file"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OSError(f"Encountered error while reading file {status.getPath().toString()}. {first}") from exc
        try:
            return _Footer(rows=reader.getRecordCount(), footer=reader.getFooter())
        finally:
            reader.close()

    def read_parquet(self, uri: str) -> DataFrame:
        """``spark.read.parquet(uri)``, given the schema Spark recorded in the first data
        file's footer: Spark would otherwise run a job to read that same footer (about a
        tenth of a second each here, and a step reads a dozen partitions). The files of a
        folder were written by one job, so they share it. Files without that record (not
        written by Spark) and empty folders are read as Spark reads them."""
        files = self.data_files(uri)
        meta = self.parquet_footer(files[0]).spark_schema if files else None
        reader = self.spark.read if meta is None else self.spark.read.schema(StructType.fromJson(json.loads(meta)))
        return reader.parquet(uri)


@dataclass(frozen=True)
class _Footer:
    """What ``FileSystem.parquet_footer`` reads of one file."""

    rows: int
    footer: Any  # org.apache.parquet.hadoop.metadata.ParquetMetadata

    @property
    def spark_schema(self) -> str | None:
        """The JSON of the StructType Spark wrote the file with; None for other writers."""
        return self.footer.getFileMetaData().getKeyValueMetaData().get(SPARK_SCHEMA_KEY)


class Scratch:
    """A step run's scratch folder (``Warehouse.scratch``)."""

    def __init__(self, wh: Warehouse, folder: str):
        self.wh, self.folder = wh, folder

    def __call__(self, df: DataFrame, name: str) -> DataFrame:
        """``df`` written under ``name`` and read back."""
        df.write.parquet(f"{self.folder}/{name}")
        return self.wh.fs.read_parquet(f"{self.folder}/{name}")

    def write_bucketed(self, df: DataFrame, name: str, bucketing: Bucketing) -> str:
        """``df`` written bucketed under ``name`` (for ``bucketed_scan``); its location."""
        location = f"{self.folder}/{name}"
        self.wh.write_bucketed(df, location, bucketing)
        return location

    @contextmanager
    def bucketed_scan(self, bucketing: Bucketing, schema: StructType, folders: dict[str, str],
                      source: str = "_source") -> Iterator[DataFrame]:
        """One bucketed scan over several folders, each written with ``bucketing`` (a
        bucketed partition, a ``Scratch.write_bucketed``), with a ``source`` column holding
        each row's key in ``folders``. Spark takes the whole as hash-partitioned by the
        bucketing column, the files of bucket k of every folder in partition k: an
        aggregation or window by that column over rows of all the folders runs without a
        shuffle. The folders are the partitions of a table of the session catalog that lives
        for the ``with`` block (Spark lists them when a query runs), rooted in this folder."""
        name = _catalog_table_name()
        root = f"{self.folder}/_{name}"
        # An existing root: Spark logs a warning with a stack trace for a missing one.
        self.wh.fs.mkdirs(root)
        self.wh.spark.sql(f"CREATE TABLE `{name}` ({_columns_ddl(schema)}, `{source}` string) USING parquet "
                          f"PARTITIONED BY (`{source}`) CLUSTERED BY (`{bucketing.column}`) "
                          f"INTO {bucketing.count} BUCKETS LOCATION '{_sql_string(root)}'")
        try:
            for key, folder in folders.items():
                self.wh.spark.sql(f"ALTER TABLE `{name}` ADD PARTITION (`{source}` = '{_sql_string(key)}') "
                                  f"LOCATION '{_sql_string(folder)}'")
            yield self.wh.spark.table(name)
        finally:
            self.wh.spark.sql(f"DROP TABLE IF EXISTS `{name}`")  # external: the folders stay
            self.wh.fs.delete(root)


class Warehouse:
    """Partition-level access to the tables of one warehouse in one format."""

    def __init__(self, spark: SparkSession, config: Config):
        self.spark = spark
        self.root = absolute_uri(config.storage.warehouse)
        self.format = config.storage.format
        self.fs = FileSystem(spark)

    def location(self, name: str) -> str:
        return table(name).location(self.root)

    def partition_location(self, name: str, date: str) -> str:
        return table(name).partition_location(self.root, date)

    # -- Parquet staging and recovery ---------------------------------------------------
    def _staging(self, name: str) -> str:
        return f"{self.location(name)}/{STAGING_DIR}"

    def _recover(self, name: str, date: str) -> None:
        """Put back a partition left aside by a job that died between its two renames."""
        target = self.partition_location(name, date)
        if self.fs.exists(target):
            return
        prefix = f"{PARTITION_COLUMN}={date}."
        for entry in self.fs.list_names(self._staging(name)):
            if entry.startswith(prefix) and entry.endswith(".replaced"):
                log.warning("restoring %s from %s (a previous write died mid-swap)", target, entry)
                self.fs.rename(f"{self._staging(name)}/{entry}", target)
                return

    def _clear_staging(self, name: str, date: str) -> None:
        """Delete what killed writes of this partition left in staging (after _recover has
        put back a partition left aside). Only the step's run for ``date``, which holds its
        lock, writes the partition, so nothing here is in use."""
        prefix = f"{PARTITION_COLUMN}={date}."
        for entry in self.fs.list_names(self._staging(name)):
            if entry.startswith(prefix):
                log.warning("deleting %s/%s, left by an earlier write that did not finish", self._staging(name), entry)
                self.fs.delete(f"{self._staging(name)}/{entry}")

    def _write_parquet(self, df: DataFrame, name: str, date: str, bucketing: Bucketing | None = None) -> None:
        self._recover(name, date)
        self._clear_staging(name, date)
        token = uuid.uuid4().hex
        staged = f"{self._staging(name)}/{PARTITION_COLUMN}={date}.{token}"
        target = self.partition_location(name, date)
        if bucketing is None:
            df.write.mode("errorifexists").parquet(staged)
        else:
            self.write_bucketed(df, staged, bucketing)
        replaced = f"{staged}.replaced"
        if self.fs.exists(target):
            self.fs.rename(target, replaced)
        self.fs.rename(staged, target)
        self.fs.delete(replaced)

    # -- bucketed Parquet ------------------------------------------------------------------
    def supports_bucketing(self) -> bool:
        """Bucketed partitions need Parquet and the session's own (in-memory) catalog."""
        return self.format == "parquet" and self.spark.conf.get("spark.sql.catalogImplementation") == "in-memory"

    def write_bucketed(self, df: DataFrame, path: str, bucketing: Bucketing) -> None:
        """Write ``df`` to the new folder ``path`` as Spark writes a bucketed table, and
        name the layout in the folder's ``_bucketing.json``. The rows are not sorted within
        a bucket: with ``sortBy`` the bucketed write of 10M events' profile contribution
        took 90 s against 53 s without (46 s plain); readers that need an order sort anyway."""
        name = _catalog_table_name()
        try:
            (df.write.mode("errorifexists").format("parquet").option("path", path)
             .bucketBy(bucketing.count, bucketing.column).saveAsTable(name))
        finally:
            self.spark.sql(f"DROP TABLE IF EXISTS `{name}`")  # an external table: its files stay
        self.fs.write_text(f"{path}/{BUCKETING_FILE}", json.dumps({"column": bucketing.column,
                                                                 "count": bucketing.count}))

    def bucketing(self, name: str, date: str) -> Bucketing | None:
        """How partition ``date`` of ``name`` is bucketed; None when it is stored plain (or
        absent, or in Delta)."""
        if self.format != "parquet" or not self.has_partition(name, date):
            return None
        marker = f"{self.partition_location(name, date)}/{BUCKETING_FILE}"
        if not self.fs.exists(marker):
            return None
        spec = json.loads(self.fs.read_text(marker))
        return Bucketing(spec["column"], int(spec["count"]))

    def read_bucketed(self, name: str, date: str, bucketing: Bucketing) -> DataFrame:
        """Partition ``date`` of ``name`` (written with ``bucketing``) as a bucketed scan:
        Spark takes it as hash-partitioned by the column into ``bucketing.count`` partitions."""
        stored = self.bucketing(name, date)
        if stored != bucketing:
            raise ValueError(f"{name} for {date} at {self.partition_location(name, date)} is not stored with "
                             f"{bucketing} (found {stored})")
        columns = _columns_ddl(self.fs.read_parquet(self.partition_location(name, date)).schema)
        location = _sql_string(self.partition_location(name, date))
        table_name = _catalog_table_name()
        self.spark.sql(f"CREATE TABLE `{table_name}` ({columns}) USING parquet "
                       f"CLUSTERED BY (`{bucketing.column}`) INTO {bucketing.count} BUCKETS LOCATION '{location}'")
        try:
            return self.spark.table(table_name)  # analysed now: the DataFrame outlives the entry
        finally:
            self.spark.sql(f"DROP TABLE IF EXISTS `{table_name}`")

    # -- public API ----------------------------------------------------------------------
    def write_partition(self, df: DataFrame, name: str, date: str, bucketing: Bucketing | None = None) -> None:
        """Replace partition ``date`` of table ``name`` with ``df``; nothing else changes.
        With ``bucketing`` (Parquet in the session's own catalog: ``supports_bucketing``) the
        partition is stored bucketed; elsewhere it is written plain."""
        if PARTITION_COLUMN in df.columns:
            raise ValueError(f"{name}: drop the {PARTITION_COLUMN!r} column before writing; "
                             "the partition is given by the date argument")
        if bucketing is not None and not self.supports_bucketing():
            log.debug("%s %s: written without bucketing (format %s, catalog %s)", name, date, self.format,
                      self.spark.conf.get("spark.sql.catalogImplementation"))
            bucketing = None
        if self.format == "delta":
            self._write_delta(df, name, date)
        else:
            self._write_parquet(df, name, date, bucketing)

    # -- Delta -------------------------------------------------------------------------------
    def is_delta_table(self, name: str) -> bool:
        return self.fs.exists(f"{self.location(name)}/_delta_log")

    def _day_marker(self, name: str, date: str) -> str:
        return f"{self.location(name)}/{DELTA_DAYS}/{date}"

    def _write_delta(self, df: DataFrame, name: str, date: str) -> None:
        """One commit replacing day ``date`` (module docstring), then its day record."""
        writer = (df.withColumn(PARTITION_COLUMN, F.lit(date))
                  .write.format("delta").mode("overwrite")
                  .option("replaceWhere", f"{PARTITION_COLUMN} = '{date}'")
                  .option("userMetadata", json.dumps({"tagrecall_day": date}))
                  # Columns a newer tagrecall adds join the table (older days read them as
                  # null), as each Parquet day keeps its own schema; a changed type is refused.
                  .option("mergeSchema", "true")
                  .partitionBy(PARTITION_COLUMN))
        for attempt in range(1, DELTA_WRITE_ATTEMPTS + 1):
            try:
                writer.save(self.location(name))
                break
            except Exception as exc:  # py4j / captured: Delta's concurrency exceptions by name
                if attempt == DELTA_WRITE_ATTEMPTS or not any(k in str(exc) for k in _DELTA_RETRYABLE):
                    raise
                log.warning("%s %s: the Delta commit raced another (%s); writing again (%d/%d)", name, date,
                            str(exc).strip().splitlines()[0][:200], attempt + 1, DELTA_WRITE_ATTEMPTS)
        self.fs.write_text(self._day_marker(name, date), json.dumps({"day": date}))

    def table_version(self, name: str) -> int | None:
        """The current version of Delta table ``name`` (None for Parquet or no table yet):
        what ``read_partition(..., version=)`` reads back later (time travel, within
        storage.vacuum_retain_hours)."""
        if self.format != "delta" or not self.is_delta_table(name):
            return None
        return int(self.spark.sql(f"DESCRIBE HISTORY delta.`{self.location(name)}` LIMIT 1").first()["version"])

    def has_partition(self, name: str, date: str) -> bool:
        if self.format == "delta":
            return self.fs.exists(self._day_marker(name, date))
        self._recover(name, date)
        return self.fs.exists(self.partition_location(name, date))

    def _read_delta(self, name: str, version: int | None = None) -> DataFrame:
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(self.location(name))

    def read_partition(self, name: str, date: str, hint: str = "", version: int | None = None) -> DataFrame:
        """Partition ``date`` of ``name``, without the ``dt`` column; MissingPartitionError
        naming the path when it does not exist. ``version`` (Delta only) reads the day as
        that version of the table held it (``table_version``)."""
        if version is not None and self.format != "delta":
            raise ValueError(f"{name}: reading version {version} needs a Delta table (storage.format is "
                             f"{self.format!r}, which keeps only each day's current rows)")
        if not self.has_partition(name, date):
            writer = table(name).written_by
            raise MissingPartitionError(
                f"{name} for {date} not found at {self.partition_location(name, date)}: "
                f"run `tagrecall {writer} --date {date}` first{hint}")
        if self.format == "delta":
            return self._read_delta(name, version).where(F.col(PARTITION_COLUMN) == date).drop(PARTITION_COLUMN)
        return self.fs.read_parquet(self.partition_location(name, date))

    def row_count(self, name: str, date: str) -> int:
        """The rows of partition ``date`` of ``name`` (MissingPartitionError when absent).
        A Parquet partition of at most FOOTER_COUNT_MAX_FILES files is counted from its
        files' footers, which hold each file's row count, in the driver: no Spark job (about
        a fifth of a second each on 2 cores, several per step for its run report). Larger
        partitions, and Delta tables, are counted by Spark."""
        if self.format == "parquet":
            if not self.has_partition(name, date):
                self.read_partition(name, date)  # raises, naming the step to run
            files = self.fs.data_files(self.partition_location(name, date))
            if len(files) <= FOOTER_COUNT_MAX_FILES:
                return sum(self.fs.parquet_footer(f).rows for f in files)
        return self.read_partition(name, date).count()

    def read_partitions(self, name: str, dates: list[str]) -> DataFrame | None:
        """The union of the existing partitions among ``dates``, with a ``dt`` column;
        None when none exists."""
        present = [d for d in dates if self.has_partition(name, d)]
        if not present:
            return None
        frames = [self.read_partition(name, d).withColumn(PARTITION_COLUMN, F.lit(d)) for d in present]
        out = frames[0]
        for frame in frames[1:]:
            out = out.unionByName(frame)
        return out

    def partitions(self, name: str) -> list[str]:
        """Dates of the partitions of ``name`` that exist, sorted."""
        if self.format == "delta":  # not the temporary names of a record being written
            return [n for n in self.fs.list_names(f"{self.location(name)}/{DELTA_DAYS}") if _DAY.fullmatch(n)]
        prefix = f"{PARTITION_COLUMN}="
        return [n[len(prefix):] for n in self.fs.list_names(self.location(name))
                if n.startswith(prefix) and _DAY.fullmatch(n[len(prefix):])]

    # -- scratch space ---------------------------------------------------------------------
    @contextmanager
    def scratch(self, label: str) -> Iterator[Scratch]:
        """A scratch folder for one step run, deleted on exit whether the step succeeds or
        fails. Yields a ``Scratch``: ``stage(df, name)`` writes ``df`` there as Parquet and
        reads it back, so a step that reads an expensive intermediate several times pays for
        it once (cheaper than Spark's in-memory cache for wide string columns)."""
        for entry in self.fs.list_names(f"{self.root}/_scratch"):
            if entry.startswith(f"{label}-"):  # left by a killed run of the same step and day
                self.fs.delete(f"{self.root}/_scratch/{entry}")
        scratch = Scratch(self, f"{self.root}/_scratch/{label}-{uuid.uuid4().hex}")
        try:
            yield scratch
        finally:
            self.fs.delete(scratch.folder)

    # -- run reports ----------------------------------------------------------------------
    def write_run_report(self, step: str, date: str, report: dict[str, Any]) -> str:
        uri = run_report_location(self.root, step, date)
        self.fs.write_text(uri, json.dumps(report, indent=2, sort_keys=True, default=str))
        return uri

    def read_run_report(self, step: str, date: str) -> dict[str, Any]:
        uri = run_report_location(self.root, step, date)
        if not self.fs.exists(uri):
            raise MissingPartitionError(f"run report {uri} not found: run `tagrecall {step} --date {date}`")
        return json.loads(self.fs.read_text(uri))
