"""The chain on Delta gives the tables it gives on Parquet: the synthetic feed's data steps
run again into a Delta warehouse from the same landing, every table of every day compared
with the Parquet one (values to 1e-9), both read outside Spark (models/tables.py: the
Parquet folders, the Delta log). A day run again leaves every table as it was."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import numpy as np
import pytest

from jobs import index, ingest, profiles, triples
from models import tables
from schemas.catalog import TABLES

DAYS = 2  # of the feed's days: enough for triples, which need D-1's profiles, on the second
DATA_STEPS = (ingest, profiles, index, triples)


@pytest.fixture(scope="module")
def both_formats(delta, synthetic_feed, tmp_path_factory):
    """(the Parquet feed's config, the same days on Delta, the days)."""
    parquet, base, dates = synthetic_feed
    config = parquet.replace(storage=dataclasses.replace(
        parquet.storage, warehouse=str(tmp_path_factory.mktemp("delta-feed") / "warehouse"), format="delta"))
    for day in dates[:DAYS]:
        for step in DATA_STEPS:
            step.run(delta, config, day)
    return parquet, config, dates[:DAYS]


def _plain(value):
    """A cell as plain Python (Arrow lists and structs become lists and dicts)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    return value


def _close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return a == b


def _rows(config, name: str, day: dt.date) -> list[dict] | None:
    found = tables.partitions(config, name, [day]).get(day.isoformat())
    if found is None:
        return None
    if not found.files:
        return []
    rows = [_plain(r) for r in tables.dataset([found]).to_table().to_pylist()]
    # An order that float noise in the last bits cannot change: the row's text, rounded.
    return sorted(rows, key=lambda r: repr({k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()}))


def _differences(left, right, days) -> list[str]:
    out = []
    for name in TABLES:
        for day in days:
            a, b = _rows(left, name, day), _rows(right, name, day)
            if (a is None) != (b is None):
                out.append(f"{name} {day}: present in one format only")
            elif a is not None and (len(a) != len(b) or not all(_close(x, y) for x, y in zip(a, b, strict=True))):
                out.append(f"{name} {day}: {len(a)} rows against {len(b)}, or values differing by more than 1e-9")
    return out


def test_the_data_steps_on_delta_give_the_parquet_tables(both_formats):
    parquet, delta_config, days = both_formats
    written = [n for n in TABLES if tables.partitions(delta_config, n, days)]
    assert {"events", "articles", "users", "user_tag_profile", "tag_index", "training_triples"} <= set(written)
    assert _differences(parquet, delta_config, days) == []


def test_a_day_run_again_on_delta_changes_no_table(both_formats, delta):
    """Ingest and triples, the steps writing the most tables (four, two), run again."""
    _, config, days = both_formats
    before = {(n, d): _rows(config, n, d) for n in TABLES for d in days}
    for step in (ingest, triples):
        step.run(delta, config, days[-1])
    after = {(n, d): _rows(config, n, d) for n in TABLES for d in days}
    assert [k for k in before if before[k] != after[k]] == []
