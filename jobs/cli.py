"""The `tagrecall` command: one entry point for people, calling the same ``run()``
functions that spark-submit and Airflow call.

    tagrecall demo
    tagrecall generate --raw DIR --start D --days N [--users --articles --tags --seed --bad-rate]
    tagrecall import-kuairand --src DIR --raw DIR
    tagrecall run --date D [--until D2] [--steps a,b,...]
    tagrecall ingest|profiles|index|triples|train|export|publish|evaluate --date D
              (profiles: [--full]; publish: [--rollback])
    tagrecall recall --user U [--k 100]     a user's recall from Redis
    tagrecall report --date D [--out FILE]  one HTML page about day D's run
    tagrecall profile-eval --date D [--until D2] [--top-n 1,3,5]
    tagrecall config                    print the built-in defaults as TOML

Common options: --config FILE --warehouse URI --raw URI --format parquet|delta --master URL
--set section.key=value (repeatable).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from jobs.common.config import Config, ConfigError, defaults_as_toml, load_config
from jobs.common.dates import date_range, parse_date

log = logging.getLogger("tagrecall")

# The daily chain, in order. Step modules are imported when a step runs, so that
# `tagrecall --help` does not pay for importing Spark.


def _ingest(spark, config, date):
    from jobs import ingest

    return ingest.run(spark, config, date)


def _profiles(spark, config, date, full=False):
    from jobs import profiles

    return profiles.run(spark, config, date, full=full)


def _index(spark, config, date):
    from jobs import index

    return index.run(spark, config, date)


def _triples(spark, config, date):
    from jobs import triples

    return triples.run(spark, config, date)


def _train(spark, config, date):
    # Training needs no Spark (it streams the triples' Parquet); TensorFlow is imported here only.
    from models import train

    return train.run(config, date)


def _export(spark, config, date):
    from jobs import export

    return export.run(spark, config, date)


def _skipped(spark, config, step: str, date, reason: str) -> dict:
    from jobs.common.storage import Warehouse

    report = {"step": step, "date": date.isoformat(), "status": "skipped", "reason": reason}
    Warehouse(spark, config).write_run_report(step, date.isoformat(), report)
    log.info("%s %s: skipped: %s", step, date, reason)
    return report


def _publish(spark, config, date, rollback=False, if_configured=False):
    from jobs import publish
    from jobs.recall import NOT_CONFIGURED, redis_url

    if if_configured and not redis_url(config):
        return _skipped(spark, config, "publish", date, NOT_CONFIGURED)
    return publish.run(spark, config, date, rollback_only=rollback)


def _evaluate(spark, config, date, if_ready=False):
    from jobs import evaluate
    from jobs.common.storage import Warehouse

    if if_ready:
        wh, nxt = Warehouse(spark, config), (date + dt.timedelta(days=1)).isoformat()
        missing = [f"{t} of {d}" for t, d in (("user_top_tags", date.isoformat()), ("events", nxt))
                   if not wh.has_partition(t, d)]
        if missing:
            return _skipped(spark, config, "evaluate", date, f"no {' and no '.join(missing)}")
    return evaluate.run(spark, config, date)


STEPS: dict[str, Callable] = {
    "ingest": _ingest,
    "profiles": _profiles,
    "index": _index,
    "triples": _triples,
    "train": _train,
    "export": _export,
    "publish": _publish,
    "evaluate": _evaluate,
}

# In the daily chain for D, evaluate runs for D-1: it needs the events of the day after.
# publish runs only when Redis is configured (publish.redis_url or TAGRECALL_REDIS_URL).
EVALUATES_DAY_BEFORE = "evaluate"

# Steps that run without a Spark session when run alone.
WITHOUT_SPARK = {"train"}

# Options a single step takes besides --date (`tagrecall <step>` and spark-submit).
STEP_OPTIONS: dict[str, list[tuple[str, dict]]] = {
    "profiles": [("--full", {"action": "store_true",
                             "help": "recompute from every events partition up to --date instead "
                                     "of yesterday's profile + today's events"})],
    "publish": [("--rollback", {"action": "store_true",
                                "help": "make the previous published version current again (and the "
                                        "current one previous); --date is only recorded"}),
                ("--if-configured", {"action": "store_true",
                                     "help": "succeed with a 'skipped' run report when no Redis is configured"})],
    "evaluate": [("--if-ready", {"action": "store_true",
                                 "help": "succeed with a 'skipped' run report when D has no user_top_tags "
                                         "or D+1 no events yet"})],
}


def _add_step_options(parser: argparse.ArgumentParser, step: str) -> None:
    for flag, kwargs in STEP_OPTIONS.get(step, []):
        parser.add_argument(flag, **kwargs)


def _step_kwargs(args: argparse.Namespace, step: str) -> dict:
    return {flag.lstrip("-").replace("-", "_"): getattr(args, flag.lstrip("-").replace("-", "_"))
            for flag, _ in STEP_OPTIONS.get(step, [])}


def _common(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("common options")
    g.add_argument("--config", help="TOML configuration file (see `tagrecall config`)")
    g.add_argument("--warehouse", help="warehouse URI (storage.warehouse)")
    g.add_argument("--raw", help="raw landing URI (storage.raw)")
    g.add_argument("--format", choices=("parquet", "delta"), help="table format (storage.format)")
    g.add_argument("--master", help="Spark master URL (spark.master), e.g. local[*] or spark://host:7077")
    g.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting, e.g. --set ingest.max_reject_ratio=0.1")


def config_from_args(args: argparse.Namespace) -> Config:
    storage = {k: v for k, v in (("warehouse", args.warehouse), ("raw", getattr(args, "raw", None)),
                                 ("format", args.format)) if v}
    overrides: dict = {}
    if storage:
        overrides["storage"] = storage
    if args.master:
        overrides["spark"] = {"master": args.master}
    return load_config(args.config or None, overrides=overrides, assignments=args.set)


def _date_arg(text: str) -> dt.date:
    try:
        return parse_date(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tagrecall", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="synthetic data -> the daily chain for several days -> summary")
    p.add_argument("--dir", default="demo", help="where raw data and the warehouse go (default ./demo)")
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--start", type=_date_arg, default=dt.date(2026, 11, 1))
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--articles", type=int, default=3000)
    p.add_argument("--bad-rate", type=float, default=0.002)
    p.add_argument("--seed", type=int, default=7)
    _common(p)

    p = sub.add_parser("generate", help="write a synthetic feed's raw landing")
    p.add_argument("--raw", required=True, help="landing directory to write")
    p.add_argument("--start", type=_date_arg, required=True)
    p.add_argument("--days", type=int, required=True)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--articles", type=int, default=3000)
    p.add_argument("--tags", type=int, default=200)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--bad-rate", type=float, default=0.0)
    p.add_argument("--requests-per-user", type=float, default=3.0,
                   help="mean requests (of 10 impressions) per active user per day")
    p.add_argument("--timezone", default="UTC", help="time zone of day boundaries")

    p = sub.add_parser("import-kuairand", help="convert KuaiRand-Pure CSVs into the raw landing")
    p.add_argument("--src", required=True, help="folder with the KuaiRand-Pure CSV files")
    p.add_argument("--raw", required=True, help="landing directory to write")

    p = sub.add_parser("run", help="the daily chain, in order, for each date")
    p.add_argument("--date", type=_date_arg, required=True)
    p.add_argument("--until", type=_date_arg, help="last date (inclusive); default --date")
    p.add_argument("--steps", help=f"comma-separated subset of {','.join(STEPS)} (default: all)")
    _common(p)

    for step in STEPS:
        p = sub.add_parser(step, help=f"run the {step} step for one date")
        p.add_argument("--date", type=_date_arg, required=True)
        _add_step_options(p, step)
        _common(p)

    p = sub.add_parser("profile-eval", help="how well D's profiles predict D+1's clicked tags, against baselines")
    p.add_argument("--date", type=_date_arg, required=True)
    p.add_argument("--until", type=_date_arg, help="last profile date (inclusive); default --date")
    p.add_argument("--top-n", default="1,3,5", help="comma-separated list sizes N (default 1,3,5)")
    p.add_argument("--truth", help="a synthetic landing's _truth folder: also report planted-interest recovery")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    _common(p)

    p = sub.add_parser("recall", help="a user's recall from the published Redis version (no Spark)")
    p.add_argument("--user", required=True, help="user_id")
    p.add_argument("--k", type=int, default=100, help="articles to return (default 100)")
    p.add_argument("--rows", type=int, default=20, help="articles to print (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _common(p)

    p = sub.add_parser("report", help="one self-contained HTML page about day D's run")
    p.add_argument("--date", type=_date_arg, required=True)
    p.add_argument("--out", help="where to write it (default <warehouse>/_reports/<D>.html)")
    _common(p)

    sub.add_parser("config", help="print the built-in defaults as TOML")
    return parser


def _parse_steps(text: str | None) -> list[str]:
    if not text:
        return list(STEPS)
    wanted = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STEPS]
    if unknown:
        raise ConfigError(f"--steps: unknown step(s) {unknown}; known: {', '.join(STEPS)}")
    return [s for s in STEPS if s in wanted]  # always in chain order


def _chain_date(step: str, spark, config: Config, date: dt.date) -> tuple[dt.date, str | None]:
    """The date a step of D's chain runs for, or a reason to skip it."""
    if step == EVALUATES_DAY_BEFORE:
        from jobs.common.storage import Warehouse

        before = date - dt.timedelta(days=1)
        if not Warehouse(spark, config).has_partition("user_top_tags", before.isoformat()):
            return before, f"no user_top_tags for {before} to evaluate against {date}"
        return before, None
    if step == "publish":
        from jobs.recall import NOT_CONFIGURED, redis_url

        if not redis_url(config):
            return date, NOT_CONFIGURED
    return date, None


def run_chain(spark, config: Config, dates: list[dt.date], steps: list[str]) -> list[dict]:
    reports = []
    for day in dates:
        for step in steps:
            date, skip = _chain_date(step, spark, config, day)
            if skip:
                log.info("%s %s: skipped: %s", step, date, skip)
                reports.append({"step": step, "date": date.isoformat(),
                                "report": {"step": step, "status": "skipped", "reason": skip}})
                continue
            t0 = time.monotonic()
            log.info("%s %s: starting", step, date)
            report = STEPS[step](spark, config, date)
            log.info("%s %s: done in %.1fs", step, date, time.monotonic() - t0)
            reports.append({"step": step, "date": date.isoformat(), "report": report})
    return reports


def _session(config: Config, app: str):
    from jobs.common.session import build_session

    return build_session(config, app, set_master=True)


def _summarise_ingest(reports: list[dict], config: Config) -> str:
    from jobs.common.storage import absolute_uri

    lines = [f"{'date':<12}{'events landed':>15}{'accepted':>12}{'rejected':>10}  top reasons"]
    for r in reports:
        if r["step"] != "ingest":
            continue
        ev = r["report"]["sources"]["events"]
        refused = sum(ev["rejected"].values())
        top = ", ".join(f"{k} {v}" for k, v in sorted(ev["rejected"].items(), key=lambda kv: -kv[1])[:3])
        lines.append(f"{r['date']:<12}{ev['landed']:>15,}{ev['accepted']:>12,}{refused:>10,}  {top}")
    root = absolute_uri(config.storage.warehouse)
    lines.append(f"tables: {root}/<table>/dt=YYYY-MM-DD/  ({config.storage.format})")
    lines.append(f"run reports: {root}/_runs/<step>/<date>.json")
    return "\n".join(lines)


def _summarise_profiles_and_index(reports: list[dict]) -> str:
    index = {r["date"]: r["report"] for r in reports if r["step"] == "index"}
    lines = [f"\n{'date':<12}{'profile rows':>14}{'users':>9}{'tags':>6}  {'mode':<12}"
             f"{'index rows':>11}{'articles':>10}{'prior ctr':>11}"]
    for r in reports:
        if r["step"] != "profiles":
            continue
        p, i = r["report"], index.get(r["date"], {})
        ctr = i.get("prior", {}).get("ctr")
        lines.append(f"{r['date']:<12}{p['rows_written']['user_tag_profile']:>14,}{p['users']:>9,}{p['tags']:>6,}  "
                     f"{p['mode']:<12}{i.get('rows_written', {}).get('tag_index', 0):>11,}"
                     f"{i.get('articles_eligible', 0):>10,}{'' if ctr is None else f'{ctr:.4f}':>11}")
    return "\n".join(lines)


def _summarise_training(reports: list[dict]) -> str:
    lines = []
    for r in reports:
        if r["step"] != "train":
            continue
        t = r["report"]
        if t["status"] != "succeeded":
            lines.append(f"\ntrain {r['date']}: {t['status']} ({t.get('reason')})")
            continue
        v = t["validation"]

        def f(x, fmt=".4f"):
            return "n/a" if x is None else format(x, fmt)

        lines.append(f"\nmodel {t['version']} ({t['epochs']} epochs on {t['train_rows']:,} rows from "
                     f"{', '.join(t['train_days'])}), validated on {r['date']}:")
        lines.append(f"  CTR AUC {f(v.get('auc'))}  GAUC {f(v.get('gauc'))}  log loss {f(v.get('log_loss'))}  "
                     f"calibration {f(v.get('calibration'), '.3f')}  dwell RMSE {f(v.get('dwell_rmse_sec'), '.1f')} s  "
                     f"MAE {f(v.get('dwell_mae_sec'), '.1f')} s")
        weights = ", ".join(f"{k} {w:.3f}" for k, w in t["task_weights"].items())
        lines.append(f"  learned task weights: {weights}; "
                     f"{'promoted to current' if t['promoted'] else 'not promoted'} ({t['gate']})")
        lines.append(f"  {t['model_dir']}: model.keras, metrics.json, history.json, history.png")
    for r in reports:
        if r["step"] == "export":
            e = r["report"]
            lines.append(f"\nexport {r['date']}: top tags for {e['users']:,} users ({e['rows_written']['user_top_tags']:,} "
                         f"rows), ranked by {e['ranked_by']}, model {e['model_version']}")
    return "\n".join(lines)


def _summarise_publish_and_evaluate(reports: list[dict]) -> str:
    from jobs.evaluate import format_eval

    lines = []
    published = [r for r in reports if r["step"] == "publish"]
    if published and published[-1]["report"]["status"] == "succeeded":
        rep = published[-1]["report"]
        lines.append(f"\npublish {rep['date']}: version {rep['version']} is current in {rep['redis']} "
                     f"({rep['written']['users']:,} users, {rep['written']['tags']:,} tags); "
                     f"try `tagrecall recall --user <id>`")
    elif published:
        lines.append(f"\npublish: skipped ({published[-1]['report']['reason']})")
    for r in reports:
        rep = r["report"]
        if r["step"] == "evaluate" and rep["status"] == "succeeded":
            lines.append(f"\nrecall of {rep['date']} against the behaviour of {rep['against']} "
                         f"(model {rep['model_version']}):")
            lines.append(format_eval(rep["rows"]))
    return "\n".join(lines)


def cmd_demo(args) -> int:
    from jobs.synthetic import FeedParams, generate

    base = Path(args.dir).resolve()
    raw, warehouse = base / "raw", base / "warehouse"
    for path in (raw, warehouse):
        if path.exists():
            shutil.rmtree(path)
    args.warehouse, args.raw = args.warehouse or str(warehouse), args.raw or str(raw)
    config = config_from_args(args)
    params = FeedParams(users=args.users, articles=args.articles, seed=args.seed, bad_rate=args.bad_rate)
    log.info("generating %d days of synthetic feed into %s", args.days, config.storage.raw)
    generate(config.storage.raw, args.start, args.days, params, config.time.timezone)
    dates = list(date_range(args.start, args.start + dt.timedelta(days=args.days - 1)))
    spark = _session(config, "tagrecall-demo")
    # The data steps run every day; the model is trained (and the tags exported) on the last
    # two days only, to save time: the day before last gets evaluated against the last day,
    # and the last day's model passes the gate against the first one's.
    daily = [s for s in STEPS if s in ("ingest", "profiles", "index", "triples")]
    reports = run_chain(spark, config, dates[:-2], daily) + run_chain(spark, config, dates[-2:], list(STEPS))
    print(_summarise_ingest(reports, config))
    print(_summarise_profiles_and_index(reports))
    from jobs import profile_eval

    if len(dates) >= 2:
        print(f"\nhow well the profile of {dates[-2]} names the tags clicked on {dates[-1]}:")
        print(profile_eval.format_hit_rates(profile_eval.next_day_hit_rates(spark, config, dates[-2], [1, 3, 5])))
    truth = Path(config.storage.raw) / "_truth"
    print(profile_eval.format_recovery(profile_eval.planted_recovery(spark, config, dates[-1], truth)))
    print(_summarise_training(reports))
    print(_summarise_publish_and_evaluate(reports))
    from jobs import report

    path = report.write(config, dates[-1], spark=spark)
    print(f"\nreport: {path}")
    return 0


def cmd_generate(args) -> int:
    from jobs.synthetic import FeedParams, generate

    params = FeedParams(users=args.users, articles=args.articles, tags=args.tags, seed=args.seed,
                        bad_rate=args.bad_rate, requests_per_active_user=args.requests_per_user)
    summary = generate(args.raw, args.start, args.days, params, args.timezone)
    for day, info in summary["per_day"].items():
        print(f"{day}: {info['events_landed']:,} events, {info['articles_landed']:,} articles, "
              f"{info['users_landed']:,} users landed")
    print(f"planted truth: {Path(args.raw).resolve() / '_truth'}  ({summary['seconds']}s)")
    return 0


def cmd_import_kuairand(args) -> int:
    from jobs.kuairand import import_kuairand

    summary = import_kuairand(args.src, args.raw)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_run(args) -> int:
    config = config_from_args(args)
    steps = _parse_steps(args.steps)
    dates = list(date_range(args.date, args.until or args.date))
    spark = _session(config, "tagrecall-run")
    reports = run_chain(spark, config, dates, steps)
    if "ingest" in steps:
        print(_summarise_ingest(reports, config))
    return 0


def cmd_step(args) -> int:
    config = config_from_args(args)
    no_spark = args.command in WITHOUT_SPARK or getattr(args, "rollback", False)
    spark = None if no_spark else _session(config, f"tagrecall-{args.command}")
    report = STEPS[args.command](spark, config, args.date, **_step_kwargs(args, args.command))
    if args.command == "evaluate":
        from jobs.evaluate import format_eval

        print(f"recall of {report['date']} against the behaviour of {report['against']} "
              f"(model {report['model_version']}):")
        print(format_eval(report["rows"]))
        return 0
    print(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=2, default=str))
    return 0


def cmd_profile_eval(args) -> int:
    from jobs import profile_eval

    try:
        top_ns = sorted({int(x) for x in args.top_n.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--top-n {args.top_n!r}: expected comma-separated integers, e.g. 1,3,5") from None
    if not top_ns or min(top_ns) < 1:
        raise ConfigError(f"--top-n {args.top_n!r}: list sizes must be >= 1")
    config = config_from_args(args)
    spark = _session(config, "tagrecall-profile-eval")
    rows, recovery = [], []
    for date in date_range(args.date, args.until or args.date):
        rows += profile_eval.next_day_hit_rates(spark, config, date, top_ns)
        if args.truth:
            recovery.append(profile_eval.planted_recovery(spark, config, date, args.truth))
    if args.json:
        print(json.dumps({"hit_rates": rows, "recovery": recovery}, indent=2))
    else:
        print(profile_eval.format_hit_rates(rows))
        for r in recovery:
            print(profile_eval.format_recovery(r))
    return 0


def cmd_recall(args) -> int:
    from jobs import recall

    if args.k < 1:
        raise ConfigError(f"--k {args.k}: must be >= 1")
    config = config_from_args(args)
    client = recall.connect(config)
    result = recall.recall(client, args.user, args.k, config.publish.key_prefix)
    if args.json:
        print(json.dumps(result.__dict__, indent=2))
    else:
        print(recall.format_recall(result, args.rows))
    return 0


def cmd_report(args) -> int:
    from jobs import report

    config = config_from_args(args)
    path = report.write(config, args.date, args.out)
    print(f"report: {path}")
    return 0


def step_main(step: str, argv: list[str] | None = None) -> int:
    """Entry point for spark-submit: the submitter sets the master; we never do."""
    parser = argparse.ArgumentParser(prog=f"tagrecall-{step}")
    parser.add_argument("--date", type=_date_arg, required=True)
    _add_step_options(parser, step)
    _common(parser)
    args = parser.parse_args(argv)
    _configure_logging(False)
    config = config_from_args(args)
    from jobs.common.session import build_session

    spark = build_session(config, f"tagrecall-{step}", set_master=False)
    STEPS[step](spark, config, args.date, **_step_kwargs(args, step))
    return 0


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("py4j").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    handlers = {"demo": cmd_demo, "generate": cmd_generate, "import-kuairand": cmd_import_kuairand,
                "run": cmd_run, "profile-eval": cmd_profile_eval,
                "recall": cmd_recall, "report": cmd_report, "config": lambda _a: print(defaults_as_toml()) or 0}
    handler = handlers.get(args.command, cmd_step)
    try:
        return handler(args)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    except (RuntimeError, LookupError) as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
