"""The daily chain: every step in order for each date, one skip policy, one line per step.

    ingest -> profiles -> index -> triples -> evaluate (D-1) -> train -> tag_model -> export -> publish

In the chain for D, evaluate runs for D-1: it scores D-1's recall against D's events, as
soon as they are ingested and before export, whose guard reads that evaluation.
A step whose inputs are not there yet (``Step.skip_reason``: the first days of data, no
Redis configured for publish) is skipped with a 'skipped' run report naming the reason,
exactly as ``tagrecall <step> --if-ready`` and the Airflow tasks skip it; any other
failure stops the chain.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

from jobs import evaluate, export, index, ingest, profiles, publish, tag_model, train, triples
from jobs.common.entry import Step, describe
from schemas.config import Config, ConfigError

log = logging.getLogger("tagrecall")

STEPS: tuple[Step, ...] = (ingest.STEP, profiles.STEP, index.STEP, triples.STEP, evaluate.STEP, train.STEP,
                           tag_model.STEP, export.STEP, publish.STEP)
BY_NAME: dict[str, Step] = {s.name: s for s in STEPS}
DATA_STEPS = ("ingest", "profiles", "index", "triples")

# Steps that score day D against the behaviour of D+1 run for D-1 in the chain of D.
LOOKS_AHEAD = {"evaluate"}


def parse_steps(text: str | None) -> list[Step]:
    """A comma-separated subset of the chain, in chain order (all when empty)."""
    if not text:
        return list(STEPS)
    wanted = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in BY_NAME]
    if unknown:
        raise ConfigError(f"--steps: unknown step(s) {unknown}; known: {', '.join(BY_NAME)}")
    return [s for s in STEPS if s.name in wanted]


def step_date(step: Step, day: dt.date) -> dt.date:
    return day - dt.timedelta(days=1) if step.name in LOOKS_AHEAD else day


def run_step(spark, config: Config, step: Step, date: dt.date, label: str) -> dict:
    """Run one step for ``date``, or skip it with its reason (``Step.invoke``, as
    ``--if-ready`` does); log a line as it starts and one as it ends."""
    log.info("%s ...", label)
    started = time.monotonic()
    report = step.invoke(spark, config, date, if_ready=True)
    log.info("%s: %s, %.1f s", label, describe(report), time.monotonic() - started)
    return report


def run_chain(spark, config: Config, dates: list[dt.date], steps: list[Step]) -> list[dict]:
    """Every step of ``steps`` for each date in order; [{step, date, report}] in run order."""
    reports = []
    for day in dates:
        for i, step in enumerate(steps, 1):
            date = step_date(step, day)
            report = run_step(spark, config, step, date, f"[{i}/{len(steps)}] {step.name} {date}")
            reports.append({"step": step.name, "date": date.isoformat(), "report": report})
    return reports
