"""Exponential time decay, the one definition every step uses (DESIGN.md, "The arithmetic").

A weight of age a seconds counts 2^(-a / H) with half-life H days. Because
2^(-(a+b)/H) = 2^(-a/H) * 2^(-b/H), decaying by a and then by b equals decaying by a + b:
the profiles step moves yesterday's profile forward by one day instead of re-reading history.
"""

from __future__ import annotations

import math

from pyspark.sql import Column
from pyspark.sql import functions as F

DAY_SEC = 86400.0


def decay_factor(seconds: float, half_life_days: float) -> float:
    """2^(-seconds / half-life), for moving a whole table forward in time."""
    return math.pow(2.0, -seconds / (half_life_days * DAY_SEC))


def decay(age_sec: Column, half_life_days: float) -> Column:
    """2^(-age / half-life) per row, age in seconds."""
    return F.exp(F.lit(-math.log(2.0) / (half_life_days * DAY_SEC)) * age_sec)


def age_seconds(ts: Column, end_epoch_sec: float) -> Column:
    """Seconds from timestamp column ``ts`` to the instant ``end_epoch_sec`` (microsecond precision)."""
    return F.lit(end_epoch_sec) - F.unix_micros(ts).cast("double") / 1e6
