"""The shared pure transforms (jobs/transforms/) on small in-memory DataFrames, expected
rows written by hand; and properties where an invariant exists: decay composes, and the
ingest checks neither lose nor duplicate a record, whatever the record looks like."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from jobs import ingest, profiles
from jobs.transforms.decay import DAY_SEC, decay, decay_factor
from jobs.transforms.tag_lists import filled, ranked_tags, top_k_per_key
from schemas.config import IngestConfig, ProfilesConfig

SPARK_EXAMPLES = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def test_top_k_per_key_numbers_each_keys_rows_in_order(spark):
    df = spark.createDataFrame([("a", "x", 3.0), ("a", "y", 5.0), ("a", "z", 5.0), ("b", "x", 1.0)],
                               "k string, item string, score double")
    got = top_k_per_key(df, "k", [F.desc("score"), "item"], 2)
    assertDataFrameEqual(got, [("a", "y", 5.0, 1), ("a", "z", 5.0, 2), ("b", "x", 1.0, 1)])


def test_filled_puts_personal_tags_first_then_the_fallback_without_repeats(spark):
    personal = spark.createDataFrame([("u1", "t9", 1), ("u1", "t2", 2)], "user_id string, tag string, rank int")
    users = spark.createDataFrame([("u1",), ("u2",)], "user_id string")
    got = filled(personal, users, ["t1", "t2", "t3"], 4)
    assertDataFrameEqual(got, [("u1", "t9", 1), ("u1", "t2", 2), ("u1", "t1", 3), ("u1", "t3", 4),
                               ("u2", "t1", 1), ("u2", "t2", 2), ("u2", "t3", 3)])


def reference_filled(personal: dict[str, list[str]], users: list[str], tags: list[str], n: int,
                     keep_others: bool) -> set[tuple]:
    """The fill-up by hand: personal tags first, then the global tags not among them, n in
    all, for ``users``; with ``keep_others`` also the other users' personal lists, unfilled."""
    out = set()
    for user in (set(personal) | set(users)) if keep_others else set(users):
        mine = personal.get(user, [])[:n]
        rest = [t for t in tags if t not in mine] if user in users else []
        out |= {(user, t, i + 1, None if i < len(mine) else -(tags.index(t) + 1.0))
                for i, t in enumerate((mine + rest)[:n])}
    return out


@SPARK_EXAMPLES
@given(personal=st.dictionaries(st.sampled_from(["u1", "u2", "u3"]),
                                st.lists(st.sampled_from([f"t{i}" for i in range(8)]), unique=True, max_size=6)),
       users=st.lists(st.sampled_from(["u1", "u2", "u3", "u4"]), unique=True, max_size=4),
       tags=st.lists(st.sampled_from([f"t{i}" for i in range(8)]), unique=True, max_size=6),
       n=st.integers(1, 7), keep_others=st.booleans())
def test_filled_agrees_with_the_fill_up_by_hand(spark, personal, users, tags, n, keep_others):
    rows = [(u, t, i + 1) for u, ts in personal.items() for i, t in enumerate(ts)]
    mine = spark.createDataFrame(rows, "user_id string, tag string, rank int").withColumn(
        "prior", F.lit(None).cast("double"))
    got = filled(mine, spark.createDataFrame([(u,) for u in users], "user_id string"), tags, n,
                 carry={"prior": lambda rank: -rank.cast("double")}, keep_others=keep_others)
    expected = reference_filled(personal, users, tags, n, keep_others)
    assert {tuple(r) for r in got.collect()} == expected
    assert got.count() == len(expected)  # no row twice


def test_blend_ranks_by_the_mean_of_the_two_shares(spark):
    profile = spark.createDataFrame([("u1", "a", 6.0, 0.0), ("u1", "b", 4.0, 1.0), ("u1", "c", 0.0, 3.0)],
                                    "user_id string, tag string, long_weight double, short_weight double")
    # shares: a 0.5*0.6 + 0.5*0 = 0.30; b 0.5*0.4 + 0.5*0.25 = 0.325; c 0 + 0.5*0.75 = 0.375
    got = ranked_tags(profile, "blend", 3, score_as="score")
    assertDataFrameEqual(got, [("u1", "c", 1, 0.375), ("u1", "b", 2, 0.325), ("u1", "a", 3, 0.30)],
                         rtol=1e-12)
    with pytest.raises(ValueError, match="unknown profile ranking 'mid'"):
        ranked_tags(profile, "mid", 3)


@given(a=st.floats(0, 400 * DAY_SEC), b=st.floats(0, 400 * DAY_SEC), h=st.floats(0.01, 365))
def test_decay_by_a_then_b_equals_decay_by_a_plus_b(a, b, h):
    assert decay_factor(a, h) * decay_factor(b, h) == pytest.approx(decay_factor(a + b, h), rel=1e-9, abs=1e-300)


def test_the_decay_column_agrees_with_the_factor(spark):
    ages = [0.0, 1.0, DAY_SEC, 3 * DAY_SEC, 45.5 * DAY_SEC]
    got = spark.createDataFrame([(a,) for a in ages], "age double").select(decay(F.col("age"), 3.0).alias("d"))
    assert [r["d"] for r in got.collect()] == pytest.approx([decay_factor(a, 3.0) for a in ages], rel=1e-12)
    assert decay_factor(3 * DAY_SEC, 3.0) == 0.5


@SPARK_EXAMPLES
@given(a=st.floats(0, 40 * DAY_SEC), b=st.floats(0, 40 * DAY_SEC))
def test_moving_a_profile_by_a_then_b_equals_moving_it_by_a_plus_b(spark, a, b):
    cfg = ProfilesConfig()
    ts = dt.datetime(2026, 11, 1, 12)
    profile = spark.createDataFrame([("u1", "t1", 2.0, 1.5, 10.0, 3.0, ts), ("u2", "t7", 0.25, 4.0, 1.0, 0.0, ts)],
                                    profiles.profile_columns(cfg))
    twice = profiles.decayed(profiles.decayed(profile, a, cfg), b, cfg)
    once = profiles.decayed(profile, a + b, cfg)
    assertDataFrameEqual(twice, once, rtol=1e-9)


# -- ingest: no record lost or doubled, whatever arrives --------------------------------------
START = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
START_MS = int(START.timestamp() * 1000)
GOOD = {"event_id": "e1", "user_id": "u1", "article_id": "a1", "event_type": "click",
        "event_time": START_MS + 3_600_000, "dwell_ms": 30_000, "position": 2, "request_id": "r1"}
ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**63, 2**63), st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.characters(blacklist_characters="\n\r"), max_size=40), st.just("x" * 5000),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(["u1", "a1", "impression", "click", "2026-11-20T10:00:00", str(START_MS), "-1", "NaN"]))


@st.composite
def mutated_line(draw) -> str:
    record = dict(GOOD, event_id=draw(st.sampled_from(["e1", "e2", "e3", "e4"])))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["drop", "set", "extra"]))
        field = draw(st.sampled_from(sorted(GOOD)))
        if kind == "drop":
            record.pop(field, None)
        elif kind == "set":
            record[field] = draw(ODD_VALUES)
        else:
            record[draw(st.text(min_size=1, max_size=8))] = draw(ODD_VALUES)
    line = json.dumps(record, allow_nan=True)
    how = draw(st.sampled_from(["json", "json", "json", "truncated", "garbage", "not an object"]))
    if how == "truncated":
        line = line[: draw(st.integers(0, max(0, len(line) - 1)))]
    elif how == "garbage":
        line = draw(st.text(st.characters(blacklist_characters="\n\r"), max_size=60))
    elif how == "not an object":
        line = json.dumps(draw(ODD_VALUES), allow_nan=True)
    return line


@SPARK_EXAMPLES
@given(lines=st.lists(mutated_line(), min_size=1, max_size=25))
def test_every_raw_event_ends_accepted_or_refused_once_with_a_known_reason(spark, lines):
    records = spark.createDataFrame([(line,) for line in lines], "raw string")
    users = spark.createDataFrame([("u1",)], "user_id string")
    articles = spark.createDataFrame([("a1",)], "article_id string")
    cfg = IngestConfig()
    window = (START - dt.timedelta(hours=cfg.late_tolerance_hours), START + dt.timedelta(days=1, minutes=5))
    checked = ingest.checked_events(records, cfg, window, START, users, articles)
    losers = ingest.duplicate_losers(checked, ingest.duplicated_ids(checked), None)
    final = ingest.with_duplicates_marked(checked, losers)
    rows = final.select("raw", "reason", "event_id").collect()
    assert sorted(r["raw"] for r in rows) == sorted(lines)  # each record once, as received
    assert {r["reason"] for r in rows} <= {*ingest.REASONS, None}
    accepted = [r["event_id"] for r in rows if r["reason"] is None]
    assert len(accepted) == len(set(accepted))  # no event id accepted twice
