"""The export guard: serve the model's ranking only while it has recalled at least as well as
the best baseline on the last evaluated days. Pure Python over ``recall_eval`` rows.

Every day evaluate measures, against the next day's behaviour, the model's ranking
(method ``model``: D's ``model_top_tags``, what export ranked whether or not it was served)
and the baselines (``mix``, ``blend``, ``global``...). For export of D, :func:`decide` takes
the last ``guard.window_days`` evaluated days before D (at most ``guard.max_age_days`` old)
that have the model's row, pools each method's ``guard.metric`` over them (the sum of the
numerators over the sum of the denominators: a day with more clicks weighs more) and
serves the best baseline when the model's pooled value is below it; otherwise, and while
nothing has been evaluated, the model. As the model keeps being evaluated while a baseline
is served, it is served again as soon as it wins on the window.

Days evaluated without a ``model`` row (before export wrote model_top_tags) are not used:
their ``export`` may have been a baseline itself.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

MODEL = "model"


@dataclass(frozen=True)
class Decision:
    serve: str  # MODEL or the baseline served instead
    reason: str
    metric: str
    days: tuple[str, ...] = ()
    values: dict[str, float] = field(default_factory=dict)  # pooled metric per method over ``days``

    @property
    def fell_back(self) -> bool:
        return self.serve != MODEL

    def to_dict(self) -> dict:
        return {"serve": self.serve, "fell_back": self.fell_back, "reason": self.reason, "metric": self.metric,
                "days": list(self.days), "values": self.values}


def window(evaluated: Iterable[str], date: dt.date, max_age_days: int) -> list[str]:
    """The evaluated days (ISO dates) that may judge the export of ``date``: before it and at
    most ``max_age_days`` older, newest first."""
    oldest = (date - dt.timedelta(days=max_age_days)).isoformat()
    return sorted((d for d in evaluated if oldest <= d < date.isoformat()), reverse=True)


def decide(rows: Iterable[dict], metric: str, window_days: int, baselines: list[str]) -> Decision:
    """``rows``: recall_eval rows (dt, method, metric, numerator, denominator) of the candidate
    days. Ties go to the model; between baselines, to the one listed first."""
    by_day: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    for r in rows:
        if r["metric"] == metric and r["denominator"]:
            by_day[r["dt"]][r["method"]] = (float(r["numerator"]), float(r["denominator"]))
    label = metric.replace("_", " ")
    days = [d for d in sorted(by_day, reverse=True)
            if MODEL in by_day[d] and any(b in by_day[d] for b in baselines)][:window_days]
    if not days:
        return Decision(MODEL, f"no evaluated day with the model's {label} yet", metric)

    def pooled(pairs: list[tuple[float, float] | None]) -> float | None:
        if any(p is None for p in pairs):
            return None  # not evaluated on every day of the window: not comparable
        return sum(n for n, _ in pairs) / sum(d for _, d in pairs)

    values = {MODEL: pooled([by_day[d][MODEL] for d in days])}
    for b in baselines:
        v = pooled([by_day[d].get(b) for d in days])
        if v is not None:
            values[b] = v
    compared = [b for b in baselines if b in values]
    span = days[-1] if len(days) == 1 else f"{days[-1]}..{days[0]}"
    where = f"over {len(days)} evaluated day{'s' if len(days) > 1 else ''} ({span})"
    if not compared:
        return Decision(MODEL, f"no baseline evaluated on every day {where}", metric, tuple(days), values)
    best = max(compared, key=lambda b: (values[b], -baselines.index(b)))
    if values[MODEL] >= values[best]:
        reason = f"the model's {label} {values[MODEL]:.4f} >= the best baseline's ({best}) {values[best]:.4f} {where}"
        return Decision(MODEL, reason, metric, tuple(days), values)
    reason = f"the model's {label} {values[MODEL]:.4f} < {best}'s {values[best]:.4f} {where}"
    return Decision(best, reason, metric, tuple(days), values)
