"""The driver JVM's class archive (jobs/common/session.py, jobs/tools/class_archive.py):
used only when its stamp names this Java and these Spark jars, and, once recorded, really
mapped by the next driver (its classes come from the archive, not from the jars)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.common import session
from jobs.common.session import (
    class_archive,
    class_archive_stamp,
    class_archive_stamp_path,
    session_builder,
)
from schemas.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_an_archive_is_used_only_with_the_stamp_of_this_java_and_these_jars(tmp_path, caplog):
    archive = tmp_path / "classes.jsa"
    assert class_archive(str(archive)) is None                      # missing
    archive.write_bytes(b"\0" * 64)
    assert class_archive(str(archive)) is None                      # no stamp
    stamp = class_archive_stamp_path(archive)
    stamp.write_text(json.dumps(class_archive_stamp()))
    assert class_archive(str(archive)) == archive
    assert class_archive("off") is None
    other = {**class_archive_stamp(), "jars_sha256": "0" * 64}     # Spark upgraded since
    stamp.write_text(json.dumps(other))
    with caplog.at_level(logging.WARNING, logger="jobs.common.session"):
        assert class_archive(str(archive)) is None
    assert f"tagrecall class-archive --out {archive}" in caplog.text
    stamp.write_text("{not json")
    assert class_archive(str(archive)) is None


def test_the_driver_options_keep_the_users_own_next_to_the_archive(tmp_path):
    archive = tmp_path / "classes.jsa"
    archive.write_bytes(b"\0" * 64)
    class_archive_stamp_path(archive).write_text(json.dumps(class_archive_stamp()))
    config = load_config(overrides={"spark": {"class_archive": str(archive),
                                              "conf": {"spark.driver.extraJavaOptions": "-Dmine=1"}}})
    options = session_builder(config, "t", set_master=True)._options["spark.driver.extraJavaOptions"].split()
    assert f"-XX:SharedArchiveFile={archive}" in options and "-Dmine=1" in options
    # Under spark-submit the driver has started: the setting is the submitter's, untouched.
    submitted = session_builder(config, "t", set_master=False)._options["spark.driver.extraJavaOptions"]
    assert submitted == "-Dmine=1"


_DRIVER = """
import sys
from jobs.common.session import build_session
from schemas.config import load_config
config = load_config(overrides={"spark": {"master": "local[1]", "class_archive": sys.argv[1], "conf": {
    "spark.ui.enabled": "false", "spark.driver.extraJavaOptions": "-Xlog:class+load=info:file=" + sys.argv[2]}}})
spark = build_session(config, "class-archive-test")
spark.range(100).selectExpr("id % 3 AS k").groupBy("k").count().collect()
spark.stop()
"""


@pytest.mark.slow
def test_the_next_driver_loads_its_classes_from_a_recorded_archive(tmp_path):
    """The archive of this environment (`make setup` records it; when it is missing or
    stale, one recorded here): a driver started with it takes thousands of classes from it,
    one with spark.class_archive = "off" none."""
    from jobs.tools.class_archive import build

    archive = session.CLASS_ARCHIVE_DEFAULT
    if not session.class_archive_is_current(archive):
        archive = build(tmp_path / "classes.jsa")
    loaded = {}
    for setting in (str(archive), "off"):
        log = tmp_path / f"classes-{len(loaded)}.log"
        done = subprocess.run([sys.executable, "-c", _DRIVER, setting, str(log)], cwd=REPO, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        lines = log.read_text().splitlines()
        loaded[setting] = (sum("source: shared objects file (top)" in line for line in lines), len(lines))
    from_archive, total = loaded[str(archive)]
    assert from_archive > 5000 and from_archive > total / 2, loaded
    assert loaded["off"][0] == 0, loaded
