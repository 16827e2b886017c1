"""What every step shares with its callers: the common command-line options, the
description of a step (``Step``), the one way a step is skipped, and the spark-submit
entry point.

A step module ends with ``STEP = Step(NAME, run, ...)`` and ``main = STEP.main``; the chain
(jobs/chain.py), the CLI and Airflow call the same ``run``. Nothing here imports the CLI,
so ``spark-submit jobs/<step>.py`` imports the step module once.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.common.dates import parse_date
from schemas.catalog import absolute_uri, run_report_location
from schemas.config import Config, load_config

log = logging.getLogger("tagrecall")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


def configure_logging(verbose: bool = False) -> None:
    """Log lines a person can follow: time, level, message; Spark's and py4j's chatter off."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT,
                        datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("py4j", "matplotlib", "h5py", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def date_arg(text: str) -> dt.date:
    try:
        return parse_date(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_common_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("common options")
    g.add_argument("--config", help="TOML configuration file (see `tagrecall config`)")
    g.add_argument("--warehouse", help="warehouse URI (storage.warehouse)")
    g.add_argument("--raw", help="raw landing URI (storage.raw)")
    g.add_argument("--format", choices=("parquet", "delta"), help="table format (storage.format)")
    g.add_argument("--master", help="Spark master URL (spark.master), e.g. local[*] or spark://host:7077")
    g.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting, e.g. --set ingest.max_reject_ratio=0.1")


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults < --config < --warehouse/--raw/--format/--master < --set."""
    storage = {k: v for k, v in (("warehouse", args.warehouse), ("raw", getattr(args, "raw", None)),
                                 ("format", args.format)) if v}
    overrides: dict = {}
    if storage:
        overrides["storage"] = storage
    if getattr(args, "master", None):
        overrides["spark"] = {"master": args.master}
    return load_config(args.config or None, overrides=overrides, assignments=args.set)


@dataclass(frozen=True)
class Option:
    """A step's own command-line flag (besides --date and the common options)."""

    flag: str
    help: str

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


IF_READY = Option("--if-ready", "succeed with a 'skipped' run report when the step's inputs are not there yet "
                                "(or, for publish, when no Redis is configured)")


@dataclass(frozen=True)
class Step:
    """One step of the daily chain.

    ``run(spark, config, date, **options)`` does the work and returns the run report.
    ``skip_reason(spark, config, date)`` says why the step cannot run for ``date`` yet (None
    when it can): the chain and ``--if-ready`` skip with that reason, and nothing else skips.
    ``needs_spark`` is False for steps that run without a session (train), and
    ``spark_unless`` names options under which a step needs none (publish --rollback).
    """

    name: str
    run: Callable[..., dict]
    options: tuple[Option, ...] = ()
    skip_reason: Callable[[Any, Config, dt.date], str | None] | None = None
    needs_spark: bool = True
    spark_unless: tuple[str, ...] = ()
    summary: str = ""

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=f"tagrecall-{self.name}", description=self.summary)
        self.add_arguments(parser)
        return parser

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--date", type=date_arg, required=True)
        for option in self.all_options:
            parser.add_argument(option.flag, action="store_true", help=option.help)
        add_common_options(parser)

    @property
    def all_options(self) -> tuple[Option, ...]:
        return self.options + ((IF_READY,) if self.skip_reason else ())

    def wants_spark(self, options: dict) -> bool:
        return self.needs_spark and not any(options.get(o) for o in self.spark_unless)

    def invoke(self, spark, config: Config, date: dt.date, if_ready: bool = False, **options) -> dict:
        """Run the step, or with ``if_ready`` skip it with a report when it cannot run yet;
        under the step's lock for ``date`` (jobs/common/locks.py): a second run of the same
        step and day at the same time stops with StepLocked. A file of a warehouse table
        that cannot be read stops it with UnreadableFileError, naming the file and the step
        that rewrites it."""
        from jobs.common.locks import step_lock
        from jobs.common.storage import unreadable_file, unreadable_file_error

        with step_lock(config.storage.warehouse, self.name, date.isoformat(), spark):
            try:
                if if_ready and self.skip_reason is not None:
                    reason = self.skip_reason(spark, config, date)
                    if reason:
                        return skipped(config, self.name, date, reason, spark)
                return self.run(spark, config, date, **options)
            except Exception as exc:
                found = unreadable_file(exc, config.storage.warehouse, config.storage.raw)
                if found is None:
                    raise
                raise unreadable_file_error(self.name, date.isoformat(), *found) from exc

    def main(self, argv: list[str] | None = None) -> int:
        """spark-submit entry point: the submitter sets the master; the step never does."""
        args = self.parser().parse_args(argv)
        configure_logging(False)
        config = config_from_args(args)
        options = {o.dest: getattr(args, o.dest) for o in self.all_options}
        spark = None
        if self.wants_spark(options):
            from jobs.common.session import build_session

            spark = build_session(config, f"tagrecall-{self.name}", set_master=False)
        started = time.monotonic()
        report = self.invoke(spark, config, args.date, **options)
        log.info("%s %s: %s, %.1f s", self.name, args.date, describe(report), time.monotonic() - started)
        return 0


def write_report(config: Config, step: str, day: str, report: dict, spark=None) -> str:
    """Write ``_runs/<step>/<day>.json`` atomically: through Hadoop's file system when a
    Spark session is given (HDFS, object stores), else on the local or mounted warehouse."""
    if spark is not None:
        from jobs.common.storage import Warehouse

        return Warehouse(spark, config).write_run_report(step, day, report)
    uri = run_report_location(absolute_uri(config.storage.warehouse), step, day)
    text = json.dumps(report, indent=2, sort_keys=True, default=str)
    if not uri.startswith("file:"):
        raise ValueError(f"{uri}: without Spark, run reports can only be written to a local or mounted "
                         "warehouse; point storage.warehouse at one")
    path = Path(uri.removeprefix("file://").removeprefix("file:"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return uri


def skipped(config: Config, step: str, date: dt.date, reason: str, spark=None) -> dict:
    """The one way a step is skipped: a 'skipped' run report with the reason, and a log line."""
    report = {"step": step, "date": date.isoformat(), "status": "skipped", "reason": reason,
              "config": config.to_dict()}
    write_report(config, step, date.isoformat(), report, spark)
    log.debug("%s %s: skipped: %s", step, date, reason)
    return report


def describe(report: dict) -> str:
    """A step's outcome in a few words, for the one line a person reads per step."""
    status = report.get("status")
    if status == "skipped":
        return f"skipped ({report.get('reason')})"
    if status == "rolled back":
        return f"rolled back to {report.get('current')}"
    if report.get("step") == "train":
        return f"model {report['version']}, {'promoted' if report.get('promoted') else 'not promoted'}"
    if report.get("step") == "ingest":
        events = report["sources"]["events"]
        return f"{events['accepted']:,} events accepted, {sum(events['rejected'].values()):,} refused"
    if report.get("step") == "publish":
        return f"version {report['version']} current, {sum(report['written'].values()):,} keys and members"
    rows = sum((report.get("rows_written") or {}).values())
    return f"{rows:,} rows"
