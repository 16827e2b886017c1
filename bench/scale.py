"""A scale curve: each step of the daily chain at several feed sizes, and how its cost grows.

    python bench/scale.py [--sizes 1m,3m,10m] [--days 3] [--steps ingest,profiles,...]
                          [--redis-url URL] [--out bench/out] [--plot docs/benchmarks/scale.png]
                          [--driver-memory 12g] [--keep] [--no-record]
    python bench/scale.py --replot [--days 3]

For each size (events a day; users and articles as in bench/ingest.py: 85,000 users per
million events), the synthetic feed is generated once and cached under --out (bench/ingest.py's
``feed-<events>/raw`` for two days, ``feed-<events>-<days>d/raw`` otherwise). Then, in one
Spark session (local[*]) for the whole run, every step of the chain (jobs/chain.py) runs for
each day in order into a fresh warehouse ``scale-<events>/warehouse`` under --out, the way
``tagrecall run`` does (evaluate for D-1, a step whose inputs are missing skipped with its
reason); publish runs only with --redis-url. The last day's steps are timed: the steady
daily cost (day 1 builds the first tables; with fewer than 3 days, train and tag_model have
no earlier day of examples and are skipped on the last day).

Prints a table of seconds per step and size, the slope of log(seconds) against log(events)
by least squares over the sizes (1.0: linear in the feed; 0: a fixed cost), and events/s at
the largest size, and each step's peak resident set of the driver's Python process (the
steps that train and score models run there; the Spark JVM beside it is bounded by
--driver-memory). Appends one record per size as soon as it is done and one of the slopes
to bench/results/scale.jsonl (bench/record.py; not with --no-record) and, with two sizes
or more, draws seconds against events per day, log-log, to --plot. --replot runs nothing and
draws the plot from each size's newest record (a size run again replaces its points).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
from ingest import START, _feed  # bench/ is on sys.path when a benchmark runs as a script
from record import RESULTS, append, size_label
from sizes import parse_size

from jobs.chain import parse_steps, run_step, step_date
from jobs.common.session import build_session
from schemas.config import ConfigError, load_config

SLOPE_NOTE = ("slope: least-squares slope of log(seconds) on log(events a day) over the sizes; "
              "1.0 = linear in the feed, 0 = a fixed cost")


def run_size(spark, base, out: Path, events: int, days: int, steps, redis_url: str, keep: bool) -> dict:
    """Every step for each day into a fresh warehouse; {events, users, days: [{step: {...}}]}."""
    raw = _feed(out, events, days)
    summary = json.loads((raw / "_truth" / "summary.json").read_text())
    home = out / f"scale-{events}"
    shutil.rmtree(home, ignore_errors=True)
    config = base.replace(storage=dataclasses.replace(base.storage, warehouse=str(home / "warehouse"), raw=str(raw)))
    dates = [START + dt.timedelta(days=k) for k in range(days)]
    label = size_label(events)
    timed = []
    for k, day in enumerate(dates, 1):
        by_step = {}
        for i, step in enumerate(steps, 1):
            date = step_date(step, day)
            if step.name == "publish" and not redis_url:
                # Not invoked: publish would otherwise read $TAGRECALL_REDIS_URL.
                result = {"date": date.isoformat(), "seconds": None, "status": "skipped", "reason": "no --redis-url"}
            else:
                reset_peak_rss()
                t0 = time.monotonic()
                report = run_step(spark, config, step, date, f"[{i}/{len(steps)}] {step.name} {date}")
                result = {"date": date.isoformat(), "seconds": round(time.monotonic() - t0, 2),
                          "status": report.get("status", ""), "reason": report.get("reason"),
                          "python_peak_gb": peak_rss_gb()}
            by_step[step.name] = result
            skipped = result["status"] == "skipped"
            seconds = "" if skipped else f"{result['seconds']:.1f}s"
            reason = f" ({result['reason']})" if skipped else ""
            peak = result.get("python_peak_gb")
            memory = f"  (Python peak {peak:.1f} GB)" if peak else ""
            print(f"  {label:>6} day {k}/{days} {step.name:<10} {date} {seconds:>8}  {result['status']}{reason}"
                  f"{memory}", flush=True)
        timed.append(by_step)
    if not keep:
        shutil.rmtree(home, ignore_errors=True)
    return {"events": summary["per_day"][dates[-1].isoformat()]["events_landed"],
            "users": summary["params"]["users"], "requested": events, "days": timed}


def reset_peak_rss() -> None:
    """Start this process's peak resident set afresh (Linux: 5 > /proc/self/clear_refs), so
    that each step's peak is its own; a no-op where the kernel does not offer it."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_gb() -> float | None:
    """This (the driver's Python) process's peak resident set since the last reset, GB; the
    Spark JVM is another process, bounded by --driver-memory."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return round(kb / 1024**2, 2) if kb else None


def ran(step: dict) -> bool:
    return step["status"] != "skipped" and step["seconds"] is not None


def last_day(result: dict) -> dict:
    """{step: {seconds, status, ...}} of the last day, plus 'total': the seconds of the steps run."""
    steps = dict(result["days"][-1])
    steps["total"] = {"seconds": round(sum(s["seconds"] for s in steps.values() if ran(s)), 2), "status": "sum"}
    return steps


def slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(seconds) on log(events), None under two distinct sizes."""
    points = [(x, y) for x, y in points if y > 0]
    if len({x for x, _ in points}) < 2:
        return None
    xs, ys = zip(*points, strict=True)
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def curves(results: list[dict], names: list[str]) -> dict[str, dict]:
    """{step: {points: [(events, seconds)], slope, events_per_s at the largest size or None}}."""
    out = {}
    largest = results[-1]
    for name in names:
        points = [(r["events"], last_day(r)[name]["seconds"]) for r in results if ran(last_day(r)[name])]
        top = last_day(largest)[name]
        rate = largest["events"] / top["seconds"] if ran(top) and top["seconds"] > 0 else None
        out[name] = {"points": points, "slope": slope(points), "events_per_s": rate}
    return out


def print_table(results: list[dict], names: list[str], fits: dict, days: int, sizes_header: list[str]) -> None:
    largest = sizes_header[-1]
    scores = f"; evaluate scores day {days - 1}" if "evaluate" in names else ""
    print(f"\nseconds per step on day {days} of {days} (the steady daily cost{scores}):")
    head = f"{'step':<10}" + "".join(f"{h:>10}" for h in sizes_header) + f"{'slope':>8}{f'events/s at {largest}':>20}"
    print(head)
    for name in names:
        cells = []
        for r in results:
            s = last_day(r)[name]
            cells.append(f"{s['seconds']:>10.1f}" if ran(s) else f"{s['status']:>10}")
        fit = fits[name]
        slope_cell = f"{fit['slope']:>8.2f}" if fit["slope"] is not None else f"{'-':>8}"
        rate_cell = f"{fit['events_per_s']:>20,.0f}" if fit["events_per_s"] is not None else f"{'-':>20}"
        print(f"{name:<10}" + "".join(cells) + slope_cell + rate_cell)
    print(f"{'events':<10}" + "".join(f"{r['events']:>10,}" for r in results))
    print(f"{'users':<10}" + "".join(f"{r['users']:>10,}" for r in results))
    print("total: the steps that ran; a skipped step is shown as skipped and left out of its fit")
    skipped = {tuple(n for n in names if not ran(last_day(r)[n])) for r in results}
    if len(skipped) > 1:
        print("note: the steps skipped differ between sizes, so the total's slope compares different work")
    print(SLOPE_NOTE)


def draw(results: list[dict], names: list[str], fits: dict, days: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, ax = plt.subplots(figsize=(10, 5.5))
    for name in names:
        fit = fits[name]
        if not fit["points"]:
            continue
        xs, ys = zip(*fit["points"], strict=True)
        label = f"{name} (slope {fit['slope']:.2f})" if fit["slope"] is not None else name
        style = {"color": "black", "linestyle": "--", "linewidth": 2} if name == "total" else {}
        ax.plot(xs, ys, marker="o", label=label, **style)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([r["events"] for r in results], [size_label(r["events"]) for r in results])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("events per day")
    ax.set_ylabel(f"seconds, day {days}'s run")
    ax.set_title("The daily chain, step by step, against the feed's size (log-log; slope 1 = linear)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")


def record_size(r: dict, names: list[str], days: int, enabled: bool) -> None:
    """One size's record, written as soon as the size is done (a later size may not finish)."""
    steps = last_day(r)
    figures = {f"{n}_s": steps[n]["seconds"] for n in names if ran(steps[n])}
    figures |= {f"{n}_python_peak_gb": steps[n]["python_peak_gb"] for n in names
                if ran(steps[n]) and steps[n].get("python_peak_gb")}
    figures |= {"users": r["users"], "events_exact": r["events"]}
    skipped = [n for n in names if not ran(steps[n])]
    append("scale", {"events": size_label(r["requested"]), "days": days}, figures,
           note=f"skipped: {', '.join(skipped)}" if skipped else "", enabled=enabled)


def record_slopes(results: list[dict], names: list[str], fits: dict, days: int, enabled: bool) -> None:
    if len(results) < 2:
        return
    figures = {f"{n}_slope": round(fits[n]["slope"], 3) for n in names if fits[n]["slope"] is not None}
    if fits["total"]["events_per_s"] is not None:
        figures["total_events_per_s"] = round(fits["total"]["events_per_s"])
    append("scale", {"events": ",".join(size_label(r["requested"]) for r in results), "days": days}, figures,
           note="slopes of log(seconds) on log(events a day), least squares; 1.0 = linear", enabled=enabled)


def recorded(days: int) -> list[dict]:
    """Each size's newest record of --days days in bench/results/scale.jsonl, as run_size's
    results (the last day only): what --replot draws, the table the docs show."""
    newest = {}
    for r in (json.loads(line) for line in (RESULTS / "scale.jsonl").read_text().splitlines() if line.strip()):
        if r["sizes"].get("days") == days and not any(k.endswith("_slope") for k in r["figures"]):
            newest[r["sizes"]["events"]] = r
    if len(newest) < 2:
        raise SystemExit(f"--replot: {len(newest)} size(s) recorded with --days {days} in "
                         f"{RESULTS / 'scale.jsonl'}; a plot needs two")
    results = []
    for r in sorted(newest.values(), key=lambda r: r["figures"]["events_exact"]):
        steps = {k[:-2]: {"seconds": v, "status": "succeeded"} for k, v in r["figures"].items()
                 if k.endswith("_s") and k != "total_s"}
        results.append({"events": r["figures"]["events_exact"], "users": r["figures"]["users"],
                        "requested": parse_size(r["sizes"]["events"]), "days": [steps]})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1m,3m,10m", help="events a day, comma-separated (e.g. 1m,3m,10m,30m)")
    parser.add_argument("--days", type=int, default=3,
                        help="days run per size; the last is timed (3: the fewest in which every step runs)")
    parser.add_argument("--steps", help="a comma-separated subset of the chain (default: every step)")
    parser.add_argument("--redis-url", default="", help="publish to this Redis (else publish is skipped)")
    parser.add_argument("--out", default="bench/out")
    parser.add_argument("--plot", default="docs/benchmarks/scale.png", help="the PNG drawn with two sizes or more")
    parser.add_argument("--driver-memory", default="12g")
    parser.add_argument("--keep", action="store_true", help="keep each size's warehouse (the feeds are always kept)")
    parser.add_argument("--no-record", action="store_true", help="append nothing to bench/results/scale.jsonl")
    parser.add_argument("--replot", action="store_true",
                        help="run nothing: draw --plot from each size's newest record of --days days")
    args = parser.parse_args()
    if args.replot:
        results = recorded(args.days)
        names = list(dict.fromkeys(n for r in results for n in r["days"][-1]))
        for r in results:   # a step a size did not record is shown as not run
            r["days"][-1] = {n: r["days"][-1].get(n, {"seconds": None, "status": "not run"}) for n in names}
        names.append("total")
        draw(results, names, curves(results, names), args.days, Path(args.plot).resolve())
        return 0
    if args.days < 2:
        parser.error("--days must be at least 2 (day 1 builds the first tables)")
    try:
        steps = parse_steps(args.steps)
    except ConfigError as exc:
        parser.error(str(exc))
    sizes = sorted({parse_size(s) for s in args.sizes.split(",") if s.strip()})
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(overrides={"spark": {"master": "local[*]", "driver_memory": args.driver_memory,
                                            "conf": {"spark.ui.showConsoleProgress": "false"}},
                                  "storage": {"warehouse": str(out / "warehouse")},
                                  "publish": {"redis_url": args.redis_url}})
    spark = build_session(base, "tagrecall-bench-scale")
    spark.sparkContext.setLogLevel("ERROR")
    started = time.monotonic()
    results = []
    names = [s.name for s in steps] + ["total"]
    for events in sizes:
        results.append(run_size(spark, base, out, events, args.days, steps, args.redis_url, args.keep))
        record_size(results[-1], names, args.days, enabled=not args.no_record)
    fits = curves(results, names)
    print_table(results, names, fits, args.days, [size_label(r["requested"]) for r in results])
    print(f"({math.ceil(time.monotonic() - started):,} s in all, feeds cached under {out})")
    (out / "scale.json").write_text(json.dumps(
        {"days": args.days, "results": results,
         "fits": {n: {"slope": f["slope"], "events_per_s": f["events_per_s"]} for n, f in fits.items()}}, indent=2))
    record_slopes(results, names, fits, args.days, enabled=not args.no_record)
    if len(results) >= 2:
        draw(results, names, fits, args.days, Path(args.plot).resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
