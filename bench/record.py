"""Benchmark history as data: each benchmark appends the figures it printed to
``bench/results/<benchmark>.jsonl``, one JSON object a line:

    {"date": "2026-12-07", "commit": "1513689", "machine": "2 cores, 23 GiB, Linux x86_64",
     "benchmark": "ingest", "sizes": {"events": "1M"}, "figures": {"ratio": 7.3, ...},
     "note": ""}

The documentation builds its benchmark tables from these files (docs/hooks/reference.py),
so a run is recorded by running the benchmark, never by editing a page.
TAGRECALL_BENCH_RECORD=0 leaves the history alone (a trial run).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _commit() -> str:
    """The commit measured, with ``+dirty`` when the working tree has changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return head + ("+dirty" if dirty else "")


def machine() -> str:
    """Cores, memory and platform: enough to tell two machines apart in the history."""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages * size / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        memory = ""
    return f"{os.cpu_count()} cores{memory}, {platform.system()} {platform.machine()}"


def _changes() -> str:
    """A digest of the tracked files' changes against HEAD ("" outside a git checkout)."""
    root = Path(__file__).resolve().parents[1]
    try:
        diff = subprocess.run(["git", "diff", "HEAD", "--binary"], cwd=root, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    return hashlib.sha256(diff).hexdigest()


# The commit a benchmark runs, taken when it starts (it imports this module first): a run
# of an hour must not be labelled with a commit made while it ran.
_AT_START = (_commit(), _changes())


def append(benchmark: str, sizes: dict, figures: dict, note: str = "", enabled: bool = True) -> Path | None:
    """Append one run of ``benchmark`` to its history file and return the file's path
    (None when recording is off). Its commit is the one checked out when the run started,
    with ``+changed`` added when HEAD or the working tree changed since."""
    if not enabled or os.environ.get("TAGRECALL_BENCH_RECORD", "1") == "0":
        return None
    RESULTS.mkdir(parents=True, exist_ok=True)
    commit = _AT_START[0] if (_commit(), _changes()) == _AT_START else f"{_AT_START[0]}+changed"
    row = {"date": dt.date.today().isoformat(), "commit": commit, "machine": machine(),
           "benchmark": benchmark, "sizes": sizes, "figures": figures, "note": note}
    path = RESULTS / f"{benchmark}.jsonl"
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"recorded in {path}")
    return path


def size_label(n: int) -> str:
    """1036467 -> '1M', 10446634 -> '10M', 200000 -> '200k': the size a run is compared at."""
    if n >= 1_000_000:
        return f"{round(n / 1_000_000)}M"
    if n >= 1_000:
        return f"{round(n / 1_000)}k"
    return str(n)


def main(argv: list[str] | None = None) -> int:
    """Record a figure measured by hand (the demo's or the test suite's wall time):
    ``python bench/record.py demo --size days=7 --size users=2000 --figure demo_s=301 --note "..."``."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("benchmark", help="the history file's name: bench/results/<benchmark>.jsonl")
    ap.add_argument("--size", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--figure", action="append", default=[], metavar="NAME=NUMBER", required=True)
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)

    def pairs(items: list[str], number: bool) -> dict:
        out = {}
        for item in items:
            name, _, value = item.partition("=")
            if not name or not value:
                ap.error(f"{item!r}: expected NAME=VALUE")
            out[name] = float(value) if number else value
        return out

    append(args.benchmark, pairs(args.size, False), pairs(args.figure, True), args.note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
