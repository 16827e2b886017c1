"""The `tagrecall` command: argument parsing, and a call into the chain, a step or a tool.
It holds no logic of its own: the same ``run()`` functions serve spark-submit and Airflow.

    tagrecall demo
    tagrecall generate --raw DIR --start D --days N [--users --articles --tags --seed --bad-rate]
    tagrecall import-kuairand --src DIR --raw DIR [--random]
    tagrecall run --date D [--until D2] [--steps a,b,...]
    tagrecall ingest|profiles|index|triples|train|export|publish|evaluate --date D [--if-ready]
              (profiles: [--full]; publish: [--rollback])
    tagrecall recall --user U [--k 100]     a user's recall from Redis
    tagrecall redis-acl [--apply | --load-function]  the Redis users of publish and recall, the recall's library
    tagrecall report --date D [--out FILE]  one HTML page about day D's run
    tagrecall profile-eval --date D [--until D2] [--top-n 1,3,5]
    tagrecall config                    print the built-in defaults as TOML
    tagrecall class-archive [--out FILE] [--force]  record the driver JVM's class archive
    tagrecall delta-jars [--print] [--force]  fetch Delta Lake's jars once (Maven Central)
    tagrecall vacuum [--retain-hours H] [--tables a,b] [--full]  Delta: delete files no version needs
    tagrecall compact --date D [--tables a,b]  Delta: rewrite a day's small files as few

Common options: --config FILE --warehouse URI --raw URI --format parquet|delta --master URL
--set section.key=value (repeatable).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
from pathlib import Path

from jobs.common.dates import date_range
from jobs.common.entry import add_common_options, config_from_args, configure_logging, date_arg
from schemas.config import ConfigError, defaults_as_toml

log = logging.getLogger("tagrecall")


def build_parser() -> argparse.ArgumentParser:
    from jobs.chain import STEPS

    parser = argparse.ArgumentParser(prog="tagrecall", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="synthetic data -> the daily chain for several days -> summary")
    p.add_argument("--dir", default="demo", help="where raw data and the warehouse go (default ./demo)")
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--start", type=date_arg, default=dt.date(2026, 11, 1))
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--articles", type=int, default=3000)
    p.add_argument("--bad-rate", type=float, default=0.002)
    p.add_argument("--seed", type=int, default=7)
    add_common_options(p)

    p = sub.add_parser("class-archive", help="record the classes a driver JVM loads, so later ones start faster")
    p.add_argument("--out", type=Path, help="the archive to write (default: in this environment, where "
                                            "spark.class_archive = \"auto\" finds it)")
    p.add_argument("--force", action="store_true", help="record it even when a current one is there")

    p = sub.add_parser("delta-jars", help="fetch Delta Lake's jars from Maven once, for every later session")
    p.add_argument("--print", action="store_true", dest="print_only",
                   help="print the fetched jars as one comma-separated list (for spark-submit --jars) and exit")
    p.add_argument("--force", action="store_true", help="fetch again even when the jars are there")
    p.add_argument("--repositories", default="", help="Maven mirrors to try first (spark.jars.repositories)")

    p = sub.add_parser("vacuum", help="Delta: delete the files no table version within the retention needs")
    p.add_argument("--retain-hours", type=float, help="keep what versions of the last H hours need "
                                                      "(default storage.vacuum_retain_hours)")
    p.add_argument("--tables", help="comma-separated tables (default: every table of the warehouse)")
    p.add_argument("--full", action="store_true", help="list the tables' folders too (also deletes the files "
                                                       "of writes killed before their commit); default: LITE, "
                                                       "from the Delta log alone")
    p.add_argument("--unsafe-retention", action="store_true",
                   help="allow a retention under 24 h (only when no step or training runs on the warehouse)")
    add_common_options(p)

    p = sub.add_parser("compact", help="Delta: rewrite day D's partitions of small files as few large ones")
    p.add_argument("--date", type=date_arg, required=True)
    p.add_argument("--tables", help="comma-separated tables (default: every table of the warehouse)")
    add_common_options(p)

    p = sub.add_parser("generate", help="write a synthetic feed's raw landing")
    p.add_argument("--raw", required=True, help="landing directory to write")
    p.add_argument("--start", type=date_arg, required=True)
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
    p.add_argument("--random", action="store_true",
                   help="also import log_random_*.csv (randomly exposed videos, request_id \"random\")")

    p = sub.add_parser("run", help="the daily chain, in order, for each date")
    p.add_argument("--date", type=date_arg, required=True)
    p.add_argument("--until", type=date_arg, help="last date (inclusive); default --date")
    p.add_argument("--steps", help=f"comma-separated subset of {','.join(s.name for s in STEPS)} (default: all)")
    add_common_options(p)

    for step in STEPS:
        aliases = [step.name.replace("_", "-")] if "_" in step.name else []
        step.add_arguments(sub.add_parser(step.name, aliases=aliases,
                                          help=step.summary or f"run the {step.name} step for one date"))

    p = sub.add_parser("profile-eval", help="how well D's profiles predict D+1's clicked tags, against baselines")
    p.add_argument("--date", type=date_arg, required=True)
    p.add_argument("--until", type=date_arg, help="last profile date (inclusive); default --date")
    p.add_argument("--top-n", default="1,3,5", help="comma-separated list sizes N (default 1,3,5)")
    p.add_argument("--truth", help="a synthetic landing's _truth folder: also report planted-interest recovery")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    add_common_options(p)

    p = sub.add_parser("recall", help="a user's recall from the published Redis version (no Spark)")
    p.add_argument("--user", required=True, help="user_id")
    p.add_argument("--k", type=int, default=100, help="articles to return (default 100)")
    p.add_argument("--rows", type=int, default=20, help="articles to print (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_common_options(p)

    p = sub.add_parser("redis-acl", help="the least-privilege Redis users of publish (writer) and recall (reader)")
    p.add_argument("--writer", default="tagrecall-writer", help="the writer's ACL user name")
    p.add_argument("--reader", default="tagrecall-reader", help="the reader's ACL user name")
    p.add_argument("--apply", action="store_true",
                   help="run ACL SETUSER on the configured Redis, as $TAGRECALL_REDIS_ADMIN_USER with "
                        "$TAGRECALL_REDIS_ADMIN_PASSWORD (or the URL's user), and load the online recall's "
                        "library (FUNCTION LOAD REPLACE); default: print ACL-file lines")
    p.add_argument("--load-function", action="store_true",
                   help="only load the online recall's library, as the administrator (for users set by an ACL file)")
    add_common_options(p)

    p = sub.add_parser("report", help="one self-contained HTML page about day D's run")
    p.add_argument("--date", type=date_arg, required=True)
    p.add_argument("--out", help="where to write it (default <warehouse>/_reports/<D>.html)")
    add_common_options(p)

    sub.add_parser("config", help="print the built-in defaults as TOML")
    return parser


def _session(config, app: str):
    from jobs.common.session import build_session

    return build_session(config, app, set_master=True)


def cmd_demo(args) -> int:
    from jobs.tools import demo
    from jobs.tools.synthetic import FeedParams

    base = Path(args.dir).resolve()
    args.warehouse, args.raw = args.warehouse or str(base / "warehouse"), args.raw or str(base / "raw")
    feed = FeedParams(users=args.users, articles=args.articles, seed=args.seed, bad_rate=args.bad_rate)
    return demo.run(config_from_args(args), demo.DemoPlan(base, args.start, args.days, feed))


def cmd_class_archive(args) -> int:
    from jobs.common.session import CLASS_ARCHIVE_DEFAULT
    from jobs.tools.class_archive import build

    print(build(args.out or CLASS_ARCHIVE_DEFAULT, force=args.force))  # RuntimeError: main() reports it
    return 0


def cmd_delta_jars(args) -> int:
    from jobs.common import delta

    found = delta.jars() if args.print_only else delta.fetch(repositories=args.repositories, force=args.force)
    if args.print_only:
        print(",".join(map(str, found)))
    else:
        print(f"{len(found)} jars for {delta.DELTA_SPARK} in {delta.delta_home() / 'jars'}")
    return 0


def _tables_arg(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def cmd_vacuum(args) -> int:
    from jobs.common.maintenance import vacuum

    config = config_from_args(args)
    for line in vacuum(_session(config, "tagrecall-vacuum"), config, args.retain_hours, _tables_arg(args.tables),
                       full=args.full, unsafe_retention=args.unsafe_retention):
        print(line)
    return 0


def cmd_compact(args) -> int:
    from jobs.common.maintenance import compact

    config = config_from_args(args)
    for line in compact(_session(config, "tagrecall-compact"), config, args.date, _tables_arg(args.tables)):
        print(line)
    return 0


def cmd_generate(args) -> int:
    from jobs.tools.synthetic import FeedParams, generate

    params = FeedParams(users=args.users, articles=args.articles, tags=args.tags, seed=args.seed,
                        bad_rate=args.bad_rate, requests_per_active_user=args.requests_per_user)
    summary = generate(args.raw, args.start, args.days, params, args.timezone)
    for day, info in summary["per_day"].items():
        print(f"{day}: {info['events_landed']:,} events, {info['articles_landed']:,} articles, "
              f"{info['users_landed']:,} users landed")
    print(f"planted truth: {Path(args.raw).resolve() / '_truth'}  ({summary['seconds']}s)")
    return 0


def cmd_import_kuairand(args) -> int:
    from jobs.tools.kuairand import import_kuairand

    print(json.dumps(import_kuairand(args.src, args.raw, random=args.random), indent=2))
    return 0


def cmd_run(args) -> int:
    from jobs.chain import parse_steps, run_chain
    from jobs.tools.demo import summarise_ingest

    config = config_from_args(args)
    steps = parse_steps(args.steps)
    dates = list(date_range(args.date, args.until or args.date))
    reports = run_chain(_session(config, "tagrecall-run"), config, dates, steps)
    if any(s.name == "ingest" for s in steps):
        print(summarise_ingest(reports, config))
    return 0


def cmd_step(args) -> int:
    from jobs.chain import BY_NAME

    step = BY_NAME[args.command.replace("-", "_")]
    config = config_from_args(args)
    options = {o.dest: getattr(args, o.dest) for o in step.all_options}
    spark = _session(config, f"tagrecall-{step.name}") if step.wants_spark(options) else None
    report = step.invoke(spark, config, args.date, **options)
    if report.get("status") == "skipped":
        print(f"{step.name} {args.date}: skipped ({report['reason']})")
    elif step.name == "evaluate":
        from jobs.evaluate import format_eval

        print(f"recall of {report['date']} against the behaviour of {report['against']} "
              f"(model {report['model_version']}):")
        print(format_eval(report["rows"]))
    else:
        print(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=2, default=str))
    return 0


def cmd_profile_eval(args) -> int:
    from jobs.tools import profile_eval

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
    from jobs.online.keys import connect
    from jobs.online.recall import format_recall, recall

    if args.k < 1:
        raise ConfigError(f"--k {args.k}: must be >= 1")
    config = config_from_args(args)
    result = recall(connect(config, "reader"), args.user, args.k, config.publish.key_prefix)
    print(json.dumps(result.__dict__, indent=2) if args.json else format_recall(result, args.rows))
    return 0


def cmd_redis_acl(args) -> int:
    """Both users' rules; passwords from the variables publish.password_env and
    publish.reader_password_env name (printed only as SHA-256 hashes)."""
    import os

    import redis

    from jobs.online.keys import RedisUnavailable, acl_file_line, apply_acl, connection
    from jobs.online.redis_merge import LIBRARY, load_library

    config = config_from_args(args)
    pub = config.publish
    admin = dataclasses.replace(connection(config), username=os.environ.get("TAGRECALL_REDIS_ADMIN_USER") or None,
                                password=os.environ.get("TAGRECALL_REDIS_ADMIN_PASSWORD") or None)
    if args.load_function:
        client = admin.client()
        try:
            load_library(client)
        except redis.RedisError as exc:
            raise RedisUnavailable(f"redis-acl: FUNCTION LOAD on {admin!r} failed: {exc}") from None
        finally:
            client.close()
        print(f"Redis library {LIBRARY} loaded on {admin!r}")
        return 0
    names = {"writer": (args.writer, pub.password_env), "reader": (args.reader, pub.reader_password_env)}
    missing = [env for _, env in names.values() if not os.environ.get(env)]
    if missing:
        raise ConfigError(f"redis-acl: set the passwords in ${' and $'.join(missing)} first")
    users = {role: (user, os.environ[env]) for role, (user, env) in names.items()}
    if not args.apply:
        for role, (user, password) in users.items():
            print(acl_file_line(pub.key_prefix, role, user, password))
        return 0
    client = admin.client()
    try:
        apply_acl(client, pub.key_prefix, users)
        load_library(client)  # FUNCTION LOAD has no key scope: the administrator's, never the writer's
    except redis.RedisError as exc:
        raise RedisUnavailable(f"redis-acl: ACL SETUSER or FUNCTION LOAD on {admin!r} failed: {exc}") from None
    finally:
        client.close()
    print(f"Redis users {args.writer} (writer) and {args.reader} (reader) set on {admin!r} under "
          f"{pub.key_prefix}:*, library {LIBRARY} loaded; set ${pub.username_env} and "
          f"${pub.reader_username_env} to use them")
    return 0


def cmd_report(args) -> int:
    from jobs.tools import report

    print(f"report: {report.write(config_from_args(args), args.date, args.out)}")
    return 0


COMMANDS = {"class-archive": cmd_class_archive, "compact": cmd_compact, "delta-jars": cmd_delta_jars,
            "demo": cmd_demo, "generate": cmd_generate, "vacuum": cmd_vacuum,
            "import-kuairand": cmd_import_kuairand, "run": cmd_run,
            "profile-eval": cmd_profile_eval, "recall": cmd_recall, "redis-acl": cmd_redis_acl,
            "report": cmd_report,
            "config": lambda _args: print(defaults_as_toml()) or 0}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return COMMANDS.get(args.command, cmd_step)(args)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    except (RuntimeError, LookupError) as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
