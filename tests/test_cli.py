"""The `tagrecall` console script, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from jobs.cli import main

BIN = Path(sys.executable).parent / "tagrecall"


def _run(*args, cwd=None):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env={**os.environ, "PYSPARK_PYTHON": sys.executable})


def test_config_prints_loadable_defaults(capsys):
    assert main(["config"]) == 0
    data = tomllib.loads(capsys.readouterr().out)
    assert data["index"]["top_k"] == 200


def test_bad_override_exits_2_naming_the_key(caplog):
    assert main(["ingest", "--date", "2026-11-01", "--set", "ingest.max_dwel_ms=3"]) == 2
    assert "unknown key(s) ['max_dwel_ms']" in caplog.text


def test_bad_date_is_refused():
    with pytest.raises(SystemExit):
        main(["run", "--date", "2026-13-01"])


def test_unknown_step_is_refused(caplog):
    assert main(["run", "--date", "2026-11-01", "--steps", "ingest,fly"]) == 2
    assert "unknown step(s) ['fly']" in caplog.text


@pytest.mark.slow
def test_generate_then_run_two_days_from_the_command_line(tmp_path):
    gen = _run("generate", "--raw", str(tmp_path / "raw"), "--start", "2026-11-01", "--days", "2",
               "--users", "200", "--articles", "300", "--bad-rate", "0.01")
    assert gen.returncode == 0, gen.stderr
    run = _run("run", "--date", "2026-11-01", "--until", "2026-11-02", "--raw", str(tmp_path / "raw"),
               "--warehouse", str(tmp_path / "wh"), "--master", "local[1]")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2026-11-02" in run.stdout and "tables:" in run.stdout
    for day in ("2026-11-01", "2026-11-02"):
        report = json.loads((tmp_path / "wh" / "_runs" / "ingest" / f"{day}.json").read_text())
        truth = json.loads((tmp_path / "raw" / "_truth" / "days" / f"dt={day}.json").read_text())
        assert report["status"] == "succeeded"
        assert report["sources"]["events"]["landed"] == truth["events_landed"]
        assert all(b["balanced"] for b in report["balance"].values())
    # The whole chain ran: day 2's profile was built from day 1's; no model could be
    # trained yet (day 1 has no triples: no profile before it), and the report says so.
    runs = tmp_path / "wh" / "_runs"
    assert json.loads((runs / "profiles" / "2026-11-02.json").read_text())["mode"] == "incremental"
    assert json.loads((runs / "triples" / "2026-11-02.json").read_text())["status"] == "succeeded"
    train = json.loads((runs / "train" / "2026-11-02.json").read_text())
    assert train["status"] == "skipped" and "no training_triples in the 6 days before" in train["reason"]
