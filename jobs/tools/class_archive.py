"""``tagrecall class-archive``: record the classes a tagrecall driver JVM loads into a
class-data-sharing archive (JDK 17's dynamic AppCDS), which every later driver started by
the `tagrecall` command maps instead of loading them (jobs/common/session.py,
``spark.class_archive``). `make setup` runs it.

The recording is a real run: a small synthetic feed of two days through the data steps
(ingest, profiles, index, triples) and an Arrow batch through a Python worker, in a child
process whose JVM writes the archive when it exits. The archive is written to a temporary
name and renamed into place with its stamp (the Java build and Spark jars it is valid
for), so a reader sees the old archive or the new one, never half of one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jobs.common.session import (
    CLASS_ARCHIVE_DEFAULT,
    class_archive_is_current,
    class_archive_stamp,
    class_archive_stamp_path,
    first_tier_jit_env,
    java_binary,
)

log = logging.getLogger("tagrecall")

START = dt.date(2026, 1, 1)


def record(work: Path, archive: Path) -> None:
    """In this process (whose JVM must not have started yet): run the workload with a
    driver JVM that dumps the classes it loaded to ``archive`` when it exits."""
    from jobs.chain import DATA_STEPS, STEPS, run_chain
    from jobs.common.session import build_session
    from jobs.tools.synthetic import FeedParams, generate
    from schemas.config import load_config

    config = load_config(overrides={
        "storage": {"warehouse": str(work / "warehouse"), "raw": str(work / "raw")},
        "spark": {"master": "local[2]", "driver_memory": "1g", "class_archive": "off",
                  "conf": {"spark.driver.extraJavaOptions": f"-XX:ArchiveClassesAtExit={archive} "
                                                            "-XX:ReservedCodeCacheSize=240m",
                           "spark.ui.enabled": "false"}}})
    generate(config.storage.raw, START, 2, FeedParams(users=200, articles=300, tags=40, seed=1),
             config.time.timezone)
    spark = build_session(config, "tagrecall-class-archive")
    run_chain(spark, config, [START, START + dt.timedelta(days=1)], [s for s in STEPS if s.name in DATA_STEPS])
    # The Arrow path the scoring steps (tag_model, export) take through Python workers.
    spark.range(1000).mapInArrow(lambda batches: batches, "id long").count()
    spark.stop()


def build(archive: Path = CLASS_ARCHIVE_DEFAULT, *, force: bool = False) -> Path:
    """Record ``archive`` and its stamp; nothing to do when a current one is there
    (unless ``force``). RuntimeError naming the cause when the JVM wrote no archive."""
    if java_binary() is None:
        raise RuntimeError("no java found (JAVA_HOME or PATH): Spark needs Java 17 or newer")
    if not force and class_archive_is_current(archive):
        log.info("class archive %s is current (for this Java and these Spark jars)", archive)
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    for left in archive.parent.glob(f".{archive.name}.*.partial"):  # by a recording that was killed
        left.unlink(missing_ok=True)
    partial = archive.with_name(f".{archive.name}.{os.getpid()}.partial")
    started = time.monotonic()
    log.info("recording the classes of a small tagrecall run into %s (about two minutes)", archive)
    with tempfile.TemporaryDirectory(prefix="tagrecall-class-archive-") as tmp:
        done = subprocess.run([sys.executable, "-m", "jobs.tools.class_archive", "--record", str(partial),
                               "--work", tmp], capture_output=True, text=True,
                              env=first_tier_jit_env())  # a run of seconds: C2 would not pay off
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        raise RuntimeError(f"recording the class archive failed (exit {done.returncode}); the last lines:\n"
                           + "\n".join(tail))
    stamp = class_archive_stamp_path(archive)
    stamp.unlink(missing_ok=True)  # no moment where a new archive has the old stamp
    partial.replace(archive)
    stamp_partial = stamp.with_name(f".{stamp.name}.partial")
    stamp_partial.write_text(json.dumps(class_archive_stamp(), indent=2))
    stamp_partial.replace(stamp)
    log.info("class archive %s: %.0f MB, recorded in %.0f s", archive, archive.stat().st_size / 2**20,
             time.monotonic() - started)
    return archive


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", type=Path, help=argparse.SUPPRESS)  # the child process
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    record(args.work, args.record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
