"""Train step: ``tagrecall train --date D`` fits the multi-task model on the window of
training triples ending at D and promotes it through the gate (models/train.py).

No Spark: the triples' Parquet is streamed from the warehouse, which must be on a local or
mounted file system. TensorFlow is imported when the step runs, not when this module is.
The first days of data have no window to train on: the step is skipped with the reason.

    python -m jobs.train --date D [--config F]
"""

from __future__ import annotations

import datetime as dt

from jobs.common.entry import Step, skipped, write_report
from schemas.config import Config

NAME = "train"


def skip_reason(_spark, config: Config, date: dt.date) -> str | None:
    from models import train

    return train.skip_reason(config, date)


def run(_spark, config: Config, date: dt.date) -> dict:
    """Train and gate the model of ``date``; returns the run report (also written to _runs)."""
    from models import train

    reason = train.skip_reason(config, date)
    if reason:
        return skipped(config, NAME, date, reason)
    result = train.train_day(config, date)
    write_report(config, NAME, date.isoformat(), {**result, "config": config.to_dict()})
    return result


STEP = Step(NAME, run, skip_reason=skip_reason, needs_spark=False,
            summary="fit the multi-task model on the triples ending at D and promote it through the gate")
main = STEP.main

if __name__ == "__main__":
    raise SystemExit(main())
