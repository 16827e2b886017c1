"""Delta Lake's jars: fetched once from Maven Central, used offline by every session after.

``tagrecall delta-jars`` (run by `make setup`) resolves ``DELTA_SPARK`` and its dependencies
with Spark's own Maven resolution (Ivy, as ``--packages`` does), in a child process, into an
Ivy cache under ``DELTA_HOME``, then copies the jars Spark does not ship itself (Delta's,
its kernel's, Unity Catalog's client...; not Hadoop's, Parquet's or Jackson's, which Spark
has in newer versions) into ``DELTA_HOME/jars`` and writes ``manifest.json`` last: the
coordinate and each jar's name, size and SHA-256. A session with ``storage.format =
"delta"`` then puts exactly those files on ``spark.jars``: no network at start-up, the same
jars on every run, on the driver and, through Spark's file server, on every executor.

Under spark-submit the driver's JVM has started before the step runs, so the jars go on the
command line: ``--jars $(tagrecall delta-jars --print)``; the DAG (dags/tagrecall_daily.py)
does so when they are fetched.

The versions live here and in setup.cfg's ``delta`` extra (delta-spark's Python package, the
same release): change both together. No PySpark import at module level, so the DAG file can
read the jar list cheaply.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

# Delta 4.4 for Spark 4.2 (Scala 2.13). The Python package is pinned to the same release
# in setup.cfg (delta-spark==4.4.0).
DELTA_SPARK = "io.delta:delta-spark_4.2_2.13:4.4.0"
DELTA_HOME_DEFAULT = Path(sys.prefix) / "share" / "tagrecall" / "delta"
MANIFEST = "manifest.json"
FETCH_COMMAND = "tagrecall delta-jars"
# The session settings that make a session Delta's (its SQL and its catalog), and one of
# its tuning: a table's state (the files of its current version) is rebuilt from the log by
# a Spark job of this many tasks at each new version. Delta's default, 50, made each commit
# and read of a small day cost some 3x more on 2 cores (12 writes of a day: 68 s against
# 22 s, bench notes in docs/how-to/delta.md); tagrecall's logs hold one commit per day and
# table, a few files each. A cluster with tables of many thousand files may set it higher
# (spark.conf."spark.databricks.delta.snapshotPartitions").
DELTA_SESSION_SETTINGS = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    "spark.databricks.delta.snapshotPartitions": "1",
}


class DeltaUnavailableError(RuntimeError):
    """Delta Lake was asked for but its jars are not fetched or cannot be loaded."""


def delta_home() -> Path:
    """Where the jars live: $TAGRECALL_DELTA_HOME, else inside this virtualenv."""
    return Path(os.environ.get("TAGRECALL_DELTA_HOME") or DELTA_HOME_DEFAULT).expanduser()


def unavailable(cause: str) -> DeltaUnavailableError:
    return DeltaUnavailableError(
        f"--format delta needs Delta Lake's jars ({DELTA_SPARK} and its dependencies), and {cause}. "
        f"Fetch them once with `{FETCH_COMMAND}` (or `make setup`; it needs Maven Central, or a mirror "
        "given with --repositories), which keeps them in "
        f"{delta_home()} for every later session; or use --format parquet.")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def jars(home: Path | None = None) -> list[Path]:
    """The fetched jars, as the manifest lists them; DeltaUnavailableError naming the
    command that fetches them when they are missing, incomplete or of another version."""
    home = home or delta_home()
    manifest = home / MANIFEST
    try:
        listed = json.loads(manifest.read_text())
    except FileNotFoundError:
        raise unavailable(f"they are not fetched here ({manifest} not found)") from None
    except ValueError:
        raise unavailable(f"{manifest} is not readable JSON") from None
    if listed.get("coordinate") != DELTA_SPARK:
        raise unavailable(f"{home} holds {listed.get('coordinate')!r}, not {DELTA_SPARK}")
    out = []
    for entry in listed["jars"]:
        path = home / "jars" / entry["name"]
        if not path.is_file() or path.stat().st_size != entry["size"]:
            raise unavailable(f"{path} is missing or not the size the manifest gives")
        out.append(path)
    return out


def fetched_jars(home: Path | None = None) -> list[Path]:
    """``jars(home)``, or [] when they are not fetched (for callers where Delta is optional)."""
    try:
        return jars(home)
    except DeltaUnavailableError:
        return []


def fetched(home: Path | None = None) -> bool:
    return bool(fetched_jars(home))


def _module(ivy_jar: str) -> str:
    """The artifact of a jar Ivy retrieved (``<org>_<module>-<rev>.jar``)."""
    name = ivy_jar.split("_", 1)[1] if "_" in ivy_jar else ivy_jar
    return re.sub(r"-\d[^/]*\.jar$", "", name)


def _shipped_by_spark(module: str, spark_jars: list[str]) -> bool:
    return any(re.match(rf"{re.escape(module)}-\d", j) for j in spark_jars)


_RESOLVE = """
import sys
from pyspark.sql import SparkSession
builder = (SparkSession.builder.master("local[1]").appName("tagrecall-delta-jars")
           .config("spark.jars.packages", sys.argv[1]).config("spark.jars.ivy", sys.argv[2])
           .config("spark.ui.enabled", "false"))
if sys.argv[3]:
    builder = builder.config("spark.jars.repositories", sys.argv[3])
builder.getOrCreate().stop()
"""


def fetch(home: Path | None = None, repositories: str = "", force: bool = False) -> list[Path]:
    """Resolve DELTA_SPARK from Maven into ``home`` (module docstring); a no-op when the
    manifest there is current, unless ``force``. Returns the jars."""
    from pyspark.find_spark_home import _find_spark_home

    home = home or delta_home()
    if not force and fetched(home):
        return jars(home)
    home.mkdir(parents=True, exist_ok=True)
    ivy = home / "ivy"
    log.info("resolving %s from Maven into %s (once; later sessions use it offline)", DELTA_SPARK, ivy)
    done = subprocess.run([sys.executable, "-c", _RESOLVE, DELTA_SPARK, str(ivy), repositories],
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        why = [line for line in done.stderr.splitlines() if "unresolved dependency" in line or "Exception" in line]
        raise unavailable(f"resolving them failed ({'; '.join(why[:3]) or done.stderr.strip()[-500:]})")
    spark_jars = sorted(p.name for p in (Path(_find_spark_home()) / "jars").glob("*.jar"))
    retrieved = sorted((ivy / "jars").glob("*.jar"))
    keep = [j for j in retrieved if not _shipped_by_spark(_module(j.name), spark_jars)]
    if not any(j.name.startswith("io.delta_delta-spark") for j in keep):
        raise unavailable(f"the resolution retrieved no delta-spark jar into {ivy / 'jars'}")
    # The new set beside the old, then the manifest swapped in last: a session started
    # meanwhile reads the old manifest and the old jars, or the new of both.
    staged = Path(tempfile.mkdtemp(prefix=".jars-", dir=home))
    for j in keep:
        shutil.copy2(j, staged / j.name)
    target = home / "jars"
    old = home / f".jars-replaced-{os.getpid()}"
    if target.exists():
        target.rename(old)
    staged.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(ivy / "jars", ignore_errors=True)  # Ivy's copies; its cache stays for a re-fetch
    manifest = {"coordinate": DELTA_SPARK,
                "jars": [{"name": j.name, "size": (target / j.name).stat().st_size,
                          "sha256": _sha256(target / j.name)} for j in keep],
                "left_to_spark": sorted(j.name for j in retrieved if j not in keep)}
    tmp = home / f".{MANIFEST}.{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(home / MANIFEST)
    log.info("%d jars for Delta in %s (%d left to Spark's own)", len(keep), target, len(manifest["left_to_spark"]))
    return jars(home)
