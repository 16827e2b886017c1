"""Building a SparkSession for the `tagrecall` command and for spark-submit entry points.

Library code never builds a session: it receives one. The master comes from the caller
(``--master`` / config for the `tagrecall` command, spark-submit otherwise).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from jobs.common.delta import DELTA_SESSION_SETTINGS, DeltaUnavailableError, unavailable  # noqa: F401
from jobs.common.delta import jars as delta_jars
from schemas.config import Config

log = logging.getLogger(__name__)

LOG4J2_CONF = Path(__file__).resolve().parents[1] / "conf" / "log4j2.properties"

# Settings the steps rely on, also used by the test suite's session.
ENGINE_SETTINGS = {
    # Writing one date of a table replaces that date's partition only.
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    # HotSpot does not JIT-compile a method above 8,000 bytes of bytecode, so a whole-stage
    # function bigger than that runs interpreted (ingest's event checks ran 1.6x slower so).
    # At 8000 Spark falls back to per-operator code for such a stage instead, the setting
    # Spark's documentation suggests on HotSpot.
    "spark.sql.codegen.hugeMethodLimit": "8000",
    # Spark 4.2 lets a union of children partitioned alike report that partitioning, so an
    # aggregate or join above it skips its shuffle. Seen with 4.2.0 on export's features:
    # once exchange reuse had replaced one child's shuffle, the union no longer matched and
    # ran as a plain union (16 partitions, not 8) under a distinct that had relied on it, and
    # a join failed with "Can't zip RDDs with unequal numbers of partitions" (an aggregate
    # alone would have grouped wrongly, silently). Off: a union is never taken as partitioned.
    "spark.sql.unionOutputPartitioning": "false",
}


def first_tier_jit_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child that starts a short-lived JVM (a `tagrecall`
    step on a few hundred users, spark-submit, a test cluster's daemons): HotSpot runs its
    first tier only (``-XX:TieredStopAtLevel=1`` appended to JDK_JAVA_OPTIONS), where its
    optimising compiler costs more than it saves in a run of seconds. Not for a session that
    lives long (the test suite's, the fault campaign's own): C2 pays off there. ``extra``
    overrides variables."""
    options = " ".join(filter(None, [os.environ.get("JDK_JAVA_OPTIONS"), "-XX:TieredStopAtLevel=1"]))
    return {**os.environ, "JDK_JAVA_OPTIONS": options, **extra}


# -- the driver JVM's class archive -----------------------------------------------------------
# A JVM started here loads some 15,000 classes from Spark's jars before the first query
# runs; a class-data-sharing archive of them (JDK 17's dynamic AppCDS, recorded by
# `tagrecall class-archive`, jobs/tools/class_archive.py) maps them instead. It is valid
# for one Java build and one set of Spark jars only, so a stamp of both sits next to it and
# an archive whose stamp differs is not used (the JVM would ignore it with a warning).
CLASS_ARCHIVE_DEFAULT = Path(sys.prefix) / "share" / "tagrecall" / "spark-classes.jsa"
_STAMP_SUFFIX = ".json"


def java_binary() -> Path | None:
    """The ``java`` Spark's launcher runs: $JAVA_HOME/bin/java, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    return Path(found).resolve() if found and Path(found).exists() else None


def class_archive_stamp() -> dict:
    """What a class archive is valid for: the Java build (its binary and libjvm, by path,
    size and modification time) and Spark's jars (names, sizes, modification times)."""
    from pyspark.find_spark_home import _find_spark_home

    java = java_binary()
    libjvm = sorted(java.parents[1].glob("lib/server/libjvm.*")) if java else []
    jars = Path(_find_spark_home()) / "jars"
    listing = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(jars.glob("*.jar"))]
    return {"java": str(java), "libjvm": [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in libjvm],
            "spark_jars": str(jars), "jars_sha256": hashlib.sha256(json.dumps(listing).encode()).hexdigest()}


def class_archive_stamp_path(archive: Path) -> Path:
    return archive.with_name(archive.name + _STAMP_SUFFIX)


def class_archive_is_current(archive: Path) -> bool:
    """``archive`` and its stamp exist, and the stamp is this Java's and these jars'."""
    stamp_file = class_archive_stamp_path(archive)
    try:
        return archive.is_file() and json.loads(stamp_file.read_text()) == class_archive_stamp()
    except (OSError, ValueError):
        return False


def class_archive(setting: str) -> Path | None:
    """The archive a driver JVM started here should map, for ``spark.class_archive``
    (``auto``: CLASS_ARCHIVE_DEFAULT; ``off``; or a path): None when off, missing, or
    recorded for another Java or other Spark jars (logged, with the command that rebuilds it)."""
    if setting == "off":
        return None
    archive = CLASS_ARCHIVE_DEFAULT if setting == "auto" else Path(setting).expanduser()
    if class_archive_is_current(archive):
        return archive
    rebuild = "tagrecall class-archive" + ("" if setting == "auto" else f" --out {archive}")
    if archive.is_file():
        log.warning("the JVM class archive %s was recorded for another Java or other Spark jars (or its stamp "
                    "%s is gone); starting without it (each start some 5-12 s slower, bench/startup.py). Rebuild it with `%s`",
                    archive, class_archive_stamp_path(archive).name, rebuild)
    elif setting != "auto":  # "auto" without an archive: `make setup` was not run, nothing to say
        log.warning("spark.class_archive: %s not found; starting without it. Build it with `%s`", archive, rebuild)
    return None


def class_archive_option(setting: str) -> str:
    """The driver's JVM option that maps the archive ``class_archive(setting)`` names, or ""."""
    archive = class_archive(setting)
    return f"-XX:SharedArchiveFile={archive}" if archive else ""


def session_builder(config: Config, app_name: str, *, set_master: bool):
    """A configured builder; ``set_master`` is False under spark-submit."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    settings = {
        "spark.sql.session.timeZone": config.time.timezone,
        "spark.sql.shuffle.partitions": str(config.spark.shuffle_partitions),
        **ENGINE_SETTINGS,
        # The stage progress bars interleave with tagrecall's own lines, one per step;
        # set spark.conf."spark.ui.showConsoleProgress" = "true" to have them back.
        "spark.ui.showConsoleProgress": "false",
    }
    if set_master:
        builder = builder.master(config.spark.master)
        settings["spark.driver.memory"] = config.spark.driver_memory
    if config.storage.format == "delta":
        settings.update(DELTA_SESSION_SETTINGS)
    settings.update(config.spark.conf)
    if config.storage.format == "delta" and set_master:
        # The jars `tagrecall delta-jars` fetched, beside any the user gives. Under
        # spark-submit the driver has started: they come with --jars.
        own = config.spark.conf.get("spark.jars", "")
        settings["spark.jars"] = ",".join([*map(str, delta_jars()), *filter(None, own.split(","))])
    if set_master:
        # The driver JVM starts here. It logs Spark's warnings and errors only (no start-up
        # banner; under spark-submit the cluster's own log4j2 configuration applies), maps
        # the class archive when there is a current one (under spark-submit the driver has
        # started already: pass --driver-java-options there), and takes the user's own
        # options last.
        log4j = f"-Dlog4j2.configurationFile={LOG4J2_CONF.as_uri()}" if LOG4J2_CONF.is_file() else ""
        options = [log4j, class_archive_option(config.spark.class_archive),
                   config.spark.conf.get("spark.driver.extraJavaOptions", "")]
        if any(options):
            settings["spark.driver.extraJavaOptions"] = " ".join(o for o in options if o)
    for key, value in settings.items():
        builder = builder.config(key, value)
    return builder


def build_session(config: Config, app_name: str = "tagrecall", *, set_master: bool = True):
    """Start (or reuse) a SparkSession; with --format delta, fail clearly when the jars
    cannot be resolved."""
    builder = session_builder(config, app_name, set_master=set_master)
    # Python workers must run the same interpreter (and packages) as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # the JVM's failure to resolve packages surfaces as many types
        if config.storage.format == "delta":
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise unavailable(f"the session could not start with them ({first_line})") from exc
        raise
    if config.storage.format == "delta":
        check_delta_available(spark)
    spark.sparkContext.setLogLevel("WARN")
    return spark


def check_delta_available(spark) -> None:
    """Raise DeltaUnavailableError unless Delta's classes are on the session's classpath."""
    try:
        # Through Spark's class loader, which holds spark.jars (py4j's Class.forName does not).
        spark._jvm.org.apache.spark.util.Utils.classForName("io.delta.tables.DeltaTable", True, False)
    except Exception as exc:
        raise unavailable("io.delta.tables.DeltaTable is not on this session's classpath (under spark-submit, "
                          "pass them with --jars $(tagrecall delta-jars --print))") from exc


# What the steps that build features set while they run (export, triples): every per-user
# table of jobs/transforms/features.py is partitioned by user_id, and with Spark's default
# (true) a join on (user_id, tag) shuffles both sides again by the pair. Not a session-wide
# setting: it would let any join on keys whose prefix is already partitioned (a few tags,
# say) keep that coarse partitioning and its skew; partitioned by user, each partition holds
# many users of bounded size.
CO_PARTITIONED = {"spark.sql.requireAllClusterKeysForCoPartition": "false"}


@contextmanager
def spark_settings(spark, settings: dict[str, str]):
    """``settings`` on ``spark``'s session for the ``with`` block, the previous values (or
    their absence) restored after it, even on failure."""
    before = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)
