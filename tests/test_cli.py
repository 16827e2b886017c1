"""The `tagrecall` console script, run as a user runs it."""

from __future__ import annotations

import json
import re
import tomllib

import pytest

from jobs.cli import main
from tests.conftest import CLI_DAY1, CLI_DAY2


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
def test_generate_then_run_two_days_from_the_command_line(cli_two_days):
    # `tagrecall generate`, then `tagrecall run --date D1 --until D2` (tests/conftest.py).
    base, run = cli_two_days
    assert CLI_DAY2 in run.stdout and "tables:" in run.stdout
    # A clean run logs no Java stack trace (a warning with one reads to a user as a failure).
    assert not re.search(r"^\s+at [\w$.]+\(", run.stderr, re.M), run.stderr[-3000:]
    runs = base / "local" / "_runs"
    for day in (CLI_DAY1, CLI_DAY2):
        report = json.loads((runs / "ingest" / f"{day}.json").read_text())
        truth = json.loads((base / "raw" / "_truth" / "days" / f"dt={day}.json").read_text())
        assert report["status"] == "succeeded"
        assert report["sources"]["events"]["landed"] == truth["events_landed"]
        assert all(b["balanced"] for b in report["balance"].values())
    # The whole chain ran: day 2's profile was built from day 1's; no model could be
    # trained yet (day 1 has no triples: no profile before it), and the report says so.
    assert json.loads((runs / "profiles" / f"{CLI_DAY2}.json").read_text())["mode"] == "incremental"
    assert json.loads((runs / "triples" / f"{CLI_DAY2}.json").read_text())["status"] == "succeeded"
    train = json.loads((runs / "train" / f"{CLI_DAY2}.json").read_text())
    assert train["status"] == "skipped" and "no training_triples in the 6 days before" in train["reason"]
