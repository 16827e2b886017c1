"""The warehouse's partitions read outside Spark (training, the user-tag model, bench scripts):
the data files that make a partition now, in either table format. No Spark import.

- Parquet: the data files of the partition's folder (names not starting with ``_`` or
  ``.``). A write swaps the whole folder (jobs/common/storage.py), so the folder holds the
  current files only.
- Delta: the files the table's current version lists for the day, from the Delta log (read
  with delta-rs, the ``deltalake`` package), never the folder: a day written again leaves
  its old files on disk until VACUUM, and reading the folder would read that day twice.
  A day is there once its write committed and recorded it under ``DELTA_DAYS`` (a day
  whose rows are all gone has no file in the log; jobs/common/storage.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pyarrow.dataset as pds

from schemas.catalog import DELTA_DAYS, PARTITION_COLUMN, absolute_uri, table
from schemas.config import Config


def local_path(uri: str) -> Path:
    """A warehouse location as a local path (these readers open local files)."""
    return Path(absolute_uri(uri).removeprefix("file://").removeprefix("file:"))


@dataclass(frozen=True)
class Partition:
    """One day of one table: its current data files (absolute local paths) and their sizes."""

    table: str
    day: str
    files: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def fingerprint(self) -> list[tuple[str, int]]:
        """(file name, size) of each file: what a model version's name is derived from."""
        return [(Path(f).name, s) for f, s in zip(self.files, self.sizes, strict=True)]


def parquet_folder(folder: Path, name: str = "", day: str = "") -> Partition:
    """A folder of Parquet files written whole (a Parquet partition, a bench's data)."""
    files = sorted(f for f in Path(folder).iterdir() if f.is_file() and not f.name.startswith(("_", ".")))
    return Partition(name or Path(folder).name, day, tuple(map(str, files)), tuple(f.stat().st_size for f in files))


def _parquet(config: Config, name: str, day: str) -> Partition | None:
    folder = local_path(table(name).partition_location(config.storage.warehouse, day))
    return parquet_folder(folder, name, day) if folder.is_dir() else None


def _check_path(location: Path) -> None:
    """delta-rs decodes %-escapes in the path it is given (as a URL, or as a path: both were
    tried), so a Delta table under a folder whose name holds "%" cannot be read here."""
    if "%" in str(location):
        raise ValueError(f"{location}: the Delta tables' readers outside Spark (delta-rs) cannot open a path "
                         "holding '%' (they decode it as an escape); move the warehouse to a path without '%'")


def delta_files(location: Path) -> dict[str, list[tuple[str, int]]]:
    """Day -> (absolute path, size) of each file the Delta table at ``location`` holds now."""
    import pyarrow as pa
    from deltalake import DeltaTable

    _check_path(location)
    actions = pa.table(DeltaTable(str(location)).get_add_actions(flatten=True))
    vectors = [c for c in actions.schema.names if c.startswith("deletionVector")]
    if any(v is not None for c in vectors for v in actions.column(c).to_pylist()):
        raise ValueError(f"{location}: files with deletion vectors (rows deleted in place), which tagrecall's "
                         "writes never make; read this table with Spark, or rewrite the days it names")
    paths = [unquote(p) for p in actions.column("path").to_pylist()]
    sizes = actions.column("size_bytes").to_pylist()
    days = actions.column(f"partition.{PARTITION_COLUMN}").to_pylist()
    out: dict[str, list[tuple[str, int]]] = {}
    for path, size, day in sorted(zip(paths, sizes, days, strict=True)):
        full = path if path.startswith("/") else str(location / path)
        out.setdefault(str(day), []).append((full.removeprefix("file://").removeprefix("file:"), int(size)))
    return out


def _delta(config: Config, name: str, days: list[str]) -> dict[str, Partition]:
    """The recorded days among ``days`` with their files. The records are read first, the
    log after them: a record is written after its day's commit, so every recorded day's
    commit is in the version read (the other order could take a day committed and recorded
    in between for an empty one)."""
    location = local_path(table(name).location(config.storage.warehouse))
    recorded = [d for d in days if (location / DELTA_DAYS / d).is_file()]
    if not recorded:
        return {}
    files = delta_files(location)
    return {d: Partition(name, d, tuple(f for f, _ in files.get(d, [])), tuple(s for _, s in files.get(d, [])))
            for d in recorded}


def partitions(config: Config, name: str, dates: list[dt.date]) -> dict[str, Partition]:
    """The partitions of table ``name`` that exist among ``dates``, by day, in date order."""
    days = [d.isoformat() for d in dates]
    if config.storage.format == "delta":
        return _delta(config, name, days)
    found = {d: _parquet(config, name, d) for d in days}
    return {d: p for d, p in found.items() if p is not None}


def read(config: Config, part: Partition):
    """One partition as an Arrow table (without ``dt``); a Delta day without files (its
    rows all gone) as an empty table of the Delta table's schema."""
    import pyarrow as pa

    if part.files:
        return dataset([part]).to_table()
    if config.storage.format == "delta":
        from deltalake import DeltaTable

        location = local_path(table(part.table).location(config.storage.warehouse))
        _check_path(location)
        schema = pa.schema(DeltaTable(str(location)).schema().to_arrow())
        return schema.remove(schema.get_field_index(PARTITION_COLUMN)).empty_table()
    raise FileNotFoundError(f"no data files in {part.table} {part.day}")


def dataset(parts: list[Partition]) -> pds.Dataset:
    """The rows of ``parts`` as one Arrow dataset (their files, in order), without the
    ``dt`` column, as a Parquet partition's files hold them (Delta's writer puts it in its
    files too)."""
    files = [f for p in parts for f in p.files]
    if not files:
        where = ", ".join(f"{p.table} {p.day}" for p in parts) or "no partition"
        raise FileNotFoundError(f"no data files in {where}")
    found = pds.dataset(files, format="parquet")
    if PARTITION_COLUMN in found.schema.names:
        found = found.replace_schema(found.schema.remove(found.schema.get_field_index(PARTITION_COLUMN)))
    return found
