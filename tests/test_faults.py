"""The fault campaign's quick mode (bench/faults.py --quick): one SIGKILL per step at a
seeded random moment, re-run, tables equal to the undisturbed run, no mixed read, nothing
left behind; and two runs of ingest at once, one refused by the lock. On Parquet every
step; on Delta the steps that write the most tables (ingest: four, triples: two) and
export, the reader going through the Delta log."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


DELTA_STEPS = ("ingest", "triples", "export")


@pytest.mark.slow
@pytest.mark.parametrize("table_format", ["parquet", "delta"])
def test_the_quick_fault_campaign_loses_nothing_and_never_shows_a_mixed_partition(tmp_path, table_format):
    steps = ["--steps", ",".join(DELTA_STEPS)] if table_format == "delta" else []
    done = subprocess.run([sys.executable, str(REPO / "bench" / "faults.py"), "--quick", "--seed", "1",
                           "--work", str(tmp_path), "--format", table_format, *steps],
                          capture_output=True, text=True, timeout=1800)
    out = done.stdout + done.stderr
    summary = re.search(r"faults: (\d+) injected, (\d+) survived, (\d+) rows lost, (\d+) mixed reads", out)
    assert summary, out[-3000:]
    injected, survived, lost, mixed = map(int, summary.groups())
    records = json.loads((tmp_path / "faults.json").read_text())
    steps = {r["step"] for r in records}
    assert (set(DELTA_STEPS) if table_format == "delta" else
            {"ingest", "profiles", "index", "triples", "evaluate", "export"}) <= steps
    assert injected == len(records) and injected >= len(steps) + 1
    assert (survived, lost, mixed) == (injected, 0, 0), out[-3000:]
    assert done.returncode == 0
    pair = next(r for r in records if r["fault"] == "concurrent run")
    # Refused by the lock, unless one run ended before the other started its step (the lock
    # itself is tested deterministically in test_locks.py).
    assert pair["refused"] in (0, 1) and 0 in pair["exit_codes"]
    assert all(r["reads"]["reads"] > 0 for r in records if "reads" in r), "the reader must have read"
