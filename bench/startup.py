"""Start-up: a `tagrecall` process with and without the driver JVM's class archive
(`tagrecall class-archive`, spark.class_archive), alternating in one run.

    python bench/startup.py [--rounds 3] [--steps ingest,profiles,index] [--users 300]

Each round runs `tagrecall run --date D --steps ...` twice on the same small generated day,
each into a fresh warehouse, once with spark.class_archive = "off" and once with "auto"
(the order alternates between rounds); the processes get HotSpot's first tier only, as the
test suite's and the fault campaign's step processes do. Prints every run's seconds, the
medians and their ratio. Records the archive first when it is missing or stale.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import append  # bench/ is on sys.path when a benchmark runs as a script

from jobs.common.session import CLASS_ARCHIVE_DEFAULT, first_tier_jit_env
from jobs.tools.class_archive import build

DAY = "2026-09-01"
TAGRECALL = Path(sys.executable).parent / "tagrecall"


def _run(args: list[str]) -> float:
    started = time.monotonic()
    done = subprocess.run([str(TAGRECALL), *args], capture_output=True, text=True, env=first_tier_jit_env())
    if done.returncode != 0:
        raise SystemExit(f"tagrecall {' '.join(args[:3])} failed:\n{done.stderr[-3000:]}")
    return time.monotonic() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", default="ingest,profiles,index")
    ap.add_argument("--users", type=int, default=300)
    args = ap.parse_args()
    build(CLASS_ARCHIVE_DEFAULT)
    seconds: dict[str, list[float]] = {"off": [], "auto": []}
    with tempfile.TemporaryDirectory(prefix="tagrecall-bench-startup-") as tmp:
        raw = Path(tmp) / "raw"
        _run(["generate", "--raw", str(raw), "--start", DAY, "--days", "1", "--users", str(args.users),
              "--articles", str(args.users * 4 // 3)])
        for r in range(args.rounds):
            for setting in (("off", "auto") if r % 2 == 0 else ("auto", "off")):
                warehouse = Path(tmp) / f"warehouse-{setting}-{r}"
                s = _run(["run", "--date", DAY, "--steps", args.steps, "--raw", str(raw), "--warehouse",
                          str(warehouse), "--master", "local[2]", "--set", f"spark.class_archive={setting}"])
                seconds[setting].append(s)
                print(f"round {r + 1}: class archive {setting:<4} {s:6.1f} s", flush=True)
    off, auto = statistics.median(seconds["off"]), statistics.median(seconds["auto"])
    print(f"median: without the archive {off:.1f} s, with it {auto:.1f} s; ratio {auto / off:.2f} "
          f"({args.rounds} rounds, `tagrecall run --steps {args.steps}`)")
    append("startup", {"users": args.users, "steps": args.steps, "rounds": args.rounds},
           {"without_archive_s": round(off, 1), "with_archive_s": round(auto, 1), "ratio": round(auto / off, 2)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
