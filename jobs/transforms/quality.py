"""Data-quality gate of ingest: D's volume against the trailing median of earlier days.

A half-landed day (a partner's export that stopped, a lost partition) passes every
per-record rule and then silently trains a bad model. So ingest compares the day's
figures, counted from its accepted events, with the median of the same figures over the
last ``quality.window_days`` ingested days (from their run reports), once at least
``quality.min_days`` of them exist:

- ``events``, ``users``, ``clicks``: D / median outside [1 / quality.max_volume_ratio,
  quality.max_volume_ratio];
- ``ctr`` (clicks / impressions): D / median outside [1 / quality.max_ctr_ratio,
  quality.max_ctr_ratio].

Pure Python: the figures in, the violations out, each naming its figure.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

VOLUME_FIGURES = ("events", "users", "clicks")
FIGURES = (*VOLUME_FIGURES, "ctr")


def figures(events: int, users: int, impressions: int, clicks: int) -> dict[str, float | int | None]:
    """The day's figures as the run report keeps them."""
    return {"events": events, "users": users, "impressions": impressions, "clicks": clicks,
            "ctr": clicks / impressions if impressions else None}


def violations(today: dict, history: Iterable[dict], min_days: int, max_volume_ratio: float,
               max_ctr_ratio: float) -> list[str]:
    """One line per figure of ``today`` outside its bounds against the median of ``history``
    (earlier days' figures); [] when fewer than ``min_days`` days are known."""
    past = list(history)
    if len(past) < min_days:
        return []
    out = []
    for name in FIGURES:
        known = [d[name] for d in past if d.get(name) is not None]
        value, limit = today.get(name), max_volume_ratio if name in VOLUME_FIGURES else max_ctr_ratio
        if value is None or len(known) < min_days:
            continue
        median = statistics.median(known)
        if median <= 0:
            continue
        ratio = value / median
        if not 1 / limit <= ratio <= limit:
            shown = (f"{value:.4f}", f"{median:.4f}") if name == "ctr" else (f"{value:,}", f"{median:,.0f}")
            out.append(f"{name} {shown[0]} is {ratio:.2f}x the median {shown[1]} of the last {len(known)} "
                       f"ingested days (allowed {1 / limit:.2f}x..{limit:g}x)")
    return out
