"""Shuffles per step: each step of one day, run on a copy of a built warehouse under its
own Spark job group, with the shuffle stages that ran counted from Spark's status API.

    python bench/shuffles.py --warehouse demo/warehouse --raw demo/raw --date 2026-11-07
                             [--config jobs/conf/kuairand.toml] [--steps ingest,profiles,...]
                             [--no-adaptive]

A shuffle here is an executed stage that wrote shuffle output (a map stage of an
Exchange); a stage Spark skipped because its output was already there is not counted.
So the count is what the step made the cluster move, adaptive execution included (a join
it turned into a broadcast at run time has no shuffle); --no-adaptive counts the plans as
written. evaluate runs for the day before --date (it reads --date's events), the other
steps for --date. train runs without Spark and publish needs a Redis server: neither is
counted. The warehouse given is not modified.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

from jobs.chain import BY_NAME
from jobs.common.session import build_session
from schemas.config import load_config

DEFAULT_STEPS = "ingest,profiles,index,triples,evaluate,tag_model,export"


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def _seconds(job: dict) -> float:
    """A job's wall time from the status API's GMT timestamps ("...T12:00:00.123GMT")."""
    def parse(stamp: str) -> dt.datetime:
        return dt.datetime.strptime(stamp.replace("GMT", ""), "%Y-%m-%dT%H:%M:%S.%f")
    if not job.get("completionTime"):
        return 0.0
    return (parse(job["completionTime"]) - parse(job["submissionTime"])).total_seconds()


def group_jobs(ui: str, app_id: str, group: str) -> list[dict]:
    """{name (the call site), seconds, stages} of ``group``'s jobs, in the order they ran."""
    jobs = [j for j in _get(f"{ui}/api/v1/applications/{app_id}/jobs") if j.get("jobGroup") == group]
    return [{"name": j["name"], "seconds": round(_seconds(j), 3), "stages": len(j["stageIds"])}
            for j in sorted(jobs, key=lambda j: j["jobId"])]


def shuffle_stages(ui: str, app_id: str, group: str) -> dict:
    """{shuffles, shuffle_write_mb, stages, jobs} of the completed stages of ``group``'s jobs."""
    jobs = [j for j in _get(f"{ui}/api/v1/applications/{app_id}/jobs") if j.get("jobGroup") == group]
    stage_ids = {s for j in jobs for s in j["stageIds"]}
    stages = [s for s in _get(f"{ui}/api/v1/applications/{app_id}/stages")
              if s["stageId"] in stage_ids and s["status"] == "COMPLETE"]
    writing = [s for s in stages if s.get("shuffleWriteBytes", 0) > 0]
    return {"shuffles": len(writing), "stages": len(stages), "jobs": len(jobs),
            "shuffle_write_mb": round(sum(s["shuffleWriteBytes"] for s in writing) / 2**20, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--raw", required=True)
    parser.add_argument("--date", required=True, type=dt.date.fromisoformat)
    parser.add_argument("--config")
    parser.add_argument("--steps", default=DEFAULT_STEPS)
    parser.add_argument("--no-adaptive", action="store_true")
    parser.add_argument("--jobs", action="store_true",
                        help="also list each step's Spark jobs: call site and seconds, slowest first")
    parser.add_argument("--out", help="write the counts here as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tagrecall-shuffles-") as tmp:
        copy = Path(tmp) / "warehouse"
        print(f"copying {args.warehouse} to {copy}", flush=True)
        shutil.copytree(args.warehouse, copy, ignore=shutil.ignore_patterns("_locks", "_scratch"))
        conf = {"spark.ui.enabled": "true", "spark.ui.retainedJobs": "100000",
                "spark.ui.retainedStages": "100000"}
        if args.no_adaptive:
            conf["spark.sql.adaptive.enabled"] = "false"
        config = load_config(args.config, overrides={
            "storage": {"warehouse": str(copy), "raw": str(Path(args.raw).resolve())},
            "spark": {"conf": conf}})
        spark = build_session(config, "tagrecall-bench-shuffles")
        spark.sparkContext.setLogLevel("ERROR")
        sc = spark.sparkContext
        ui, app_id = sc.uiWebUrl, sc.applicationId
        rows = []
        for name in args.steps.split(","):
            date = args.date - dt.timedelta(days=1) if name == "evaluate" else args.date
            sc.setJobGroup(name, f"bench shuffles: {name} {date}")
            t0 = time.monotonic()
            BY_NAME[name].invoke(spark, config, date)
            seconds = time.monotonic() - t0
            time.sleep(1)  # the status store is updated by a listener, asynchronously
            rows.append({"step": name, "date": date.isoformat(), "seconds": round(seconds, 1),
                         **shuffle_stages(ui, app_id, name)})
            print(f"{name:<10} {date}  {rows[-1]['shuffles']:>3} shuffles  {rows[-1]['shuffle_write_mb']:>8.2f} MB"
                  f"  {rows[-1]['stages']:>4} stages  {rows[-1]['jobs']:>4} jobs  {seconds:>6.1f}s", flush=True)
            if args.jobs:
                listed = group_jobs(ui, app_id, name)
                rows[-1]["job_list"] = listed
                in_jobs = sum(j["seconds"] for j in listed)
                print(f"    {in_jobs:.1f}s in jobs, {seconds - in_jobs:.1f}s between them (driver, planning, "
                      "file system)")
                for j in sorted(listed, key=lambda j: -j["seconds"]):
                    print(f"    {j['seconds']:>7.2f}s  {j['stages']:>2} stages  {j['name']}")
        spark.stop()
    adaptive = "off" if args.no_adaptive else "on"
    print(f"(adaptive execution {adaptive}; executed shuffle map stages, skipped ones not counted)")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
