"""Bad input of many kinds: random mutations of raw event records (hypothesis), schema drift,
unreadable landed files and unreadable files inside the warehouse.

The property: whatever a record looks like, ingest keeps it exactly once, as a valid event
or as a refused record with a reason of REASONS and a detail naming what broke; and what
it accepts meets the table contract. It runs ingest's own transforms (parse, checks, known
ids, duplicates) in a real Spark session, without the file I/O around them. A Spark run
costs about a second whatever its size, so one hypothesis example is a batch of
LANDINGS small landings (1 to 7 records, each record mutated at most once) checked in one
run: 10 examples = 500 landings in CI, and a failure shrinks to the landing that breaks.
The file-level kinds (encodings, gzip, truncation, Parquet landing files) go through the
whole step below.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import gzip
import hashlib
import json
import math
import os
import shutil
import unicodedata
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F

from jobs import ingest
from jobs.common.storage import UnreadableFileError, Warehouse
from schemas.catalog import EVENT_TYPES
from tests.conftest import write_landing

D = dt.date(2026, 11, 20)
DAY = D.isoformat()
START_MS = int(dt.datetime(2026, 11, 20, tzinfo=dt.UTC).timestamp() * 1000)
HOUR = 3600 * 1000
USERS = ("u1", "u2")
ARTICLES = ("a1", "a2")
REQUIRED = ("event_id", "user_id", "article_id", "event_type", "event_time")
FIELDS = (*REQUIRED, "dwell_ms", "position", "request_id")


LANDINGS = 50


def base_event(n: int, landing: int = 0) -> dict:
    return {"event_id": f"L{landing}-e{n}", "user_id": USERS[n % 2], "article_id": ARTICLES[n % 2],
            "event_type": "click" if n % 3 == 0 else "impression", "event_time": START_MS + (n % 20) * HOUR,
            "dwell_ms": 30_000 if n % 3 == 0 else None, "position": n % 7, "request_id": f"r{n}"}


# -- mutations: (kind, function of (record dict, its JSON line) -> line, expected reason or None) --
weird_values = st.one_of(
    st.none(), st.just(""), st.just("   "), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.text(alphabet=st.characters(codec="utf-8", categories=("Cc", "Zs", "So", "Lo")), max_size=10),
    st.just("x" * 200_000), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5),
                                                                                   st.integers(), max_size=2),
)


@st.composite
def mutated_line(draw, n: int, landing: int) -> tuple[str, str, set[str]]:
    """(line, what was done, fields the refusal may name) for record number ``n``."""
    record = base_event(n, landing)
    # (U+FFFD stands for bytes that were not UTF-8: bad_encoding, tested on files below.)
    kind = draw(st.sampled_from(["intact", "drop", "value", "extra", "truncate", "not_object", "unknown_id",
                                 "dwell", "encoding"]))
    if kind == "drop":
        field = draw(st.sampled_from(FIELDS))
        del record[field]
        return json.dumps(record), f"drop:{field}", {field}
    if kind == "value":
        field = draw(st.sampled_from(FIELDS))
        record[field] = draw(weird_values)
        return json.dumps(record), f"value:{field}", {field}
    if kind == "extra":  # schema drift: a field the contract does not know is ignored
        record[draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in FIELDS))] = draw(weird_values)
        return json.dumps(record), "extra", set()
    if kind == "truncate":
        line = json.dumps(record)
        return line[:draw(st.integers(min_value=0, max_value=len(line) - 1))], "truncate", set()
    if kind == "not_object":
        value = draw(st.one_of(st.lists(st.integers(), max_size=3), st.integers(), st.text(max_size=10),
                               st.booleans(), st.none(), st.lists(st.just(record), min_size=1, max_size=2)))
        return json.dumps(value), "not_object", set()
    if kind == "unknown_id":
        field = draw(st.sampled_from(["user_id", "article_id"]))
        record[field] = draw(st.text(min_size=1, max_size=8).filter(
            lambda s: not _blank(s) and _stripped(s) not in USERS + ARTICLES))
        return json.dumps(record), f"unknown:{field}", {field}
    if kind == "dwell":
        record["event_type"] = "click"
        record["dwell_ms"] = draw(st.sampled_from([-1, -(2**40), 6 * HOUR + 1, 2**62]))
        return json.dumps(record), "dwell", {"dwell_ms"}
    if kind == "encoding":  # text JSON allows: escapes, non-ASCII, control characters in strings
        field = draw(st.sampled_from(["event_id", "request_id"]))
        text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\ufffd"), min_size=1, max_size=6)
        record[field] = record[field] + draw(text)
        return json.dumps(record, ensure_ascii=draw(st.booleans())), f"encoding:{field}", {field}
    return json.dumps(record), "intact", set()


@st.composite
def landing(draw, number: int) -> list[tuple[str, str, set[str]]]:
    lines = [draw(mutated_line(n, number)) for n in range(draw(st.integers(min_value=1, max_value=6)))]
    if draw(st.booleans()):  # an exact copy of a line: one copy is kept, the others refused
        lines.append(draw(st.sampled_from(lines)))
    return lines


@st.composite
def landings(draw) -> list[tuple[str, str, set[str]]]:
    return [line for k in range(LANDINGS) for line in draw(landing(k))]


def _is_blank_character(ch: str) -> bool:
    return unicodedata.category(ch) == "Cc" or unicodedata.category(ch).startswith("Z")


def _stripped(text: str) -> str:
    chars = list(text)
    while chars and _is_blank_character(chars[0]):
        chars.pop(0)
    while chars and _is_blank_character(chars[-1]):
        chars.pop()
    return "".join(chars)


def _blank(value) -> bool:
    """None, or text of control characters and separators only (the README's 'blank')."""
    return value is None or _stripped(str(value)) == ""


def expected_reason(line: str, what: str) -> str | None:
    """The reason the rules must give, where one mutation decides it alone."""
    kind, _, field = what.partition(":")
    if kind in ("truncate", "not_object"):
        try:
            parsed = json.loads(line)
        except ValueError:
            return "malformed_record"
        return None if isinstance(parsed, dict) else "malformed_record"
    if kind == "drop" and field in REQUIRED:
        return "missing_field"
    if kind == "value" and field in REQUIRED and _blank(json.loads(line)[field]):
        return "missing_field"
    if kind == "unknown":
        return "unknown_user" if field == "user_id" else "unknown_article"
    if kind == "dwell":
        return "negative_dwell" if json.loads(line)["dwell_ms"] < 0 else "absurd_dwell"
    if kind in ("intact", "extra", "encoding") or (kind == "drop" and field not in REQUIRED):
        return None  # accepted (unless it is the second copy of a line)
    return "?"  # a weird value: any reason of the rules, or none if it is a valid value


@pytest.fixture(scope="module")
def known_ids(spark):
    return (spark.createDataFrame([(u,) for u in USERS], "user_id string"),
            spark.createDataFrame([(a,) for a in ARTICLES], "article_id string"))


# 10 examples in the suite; TAGRECALL_HYPOTHESIS_EXAMPLES=200 for a longer search.
@settings(max_examples=int(os.environ.get("TAGRECALL_HYPOTHESIS_EXAMPLES", "10")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(examples=landings())
def test_every_mutated_record_is_kept_once_accepted_or_refused_with_a_reason(spark, make_config, known_ids,
                                                                             examples):
    from jobs.common.dates import day_bounds

    cfg = make_config().ingest
    start, end = day_bounds(D, "UTC")
    window = (start - dt.timedelta(hours=cfg.late_tolerance_hours), end + dt.timedelta(minutes=cfg.clock_skew_minutes))
    users, articles = known_ids
    records = spark.createDataFrame([(line,) for line, _, _ in examples], "raw string")
    checked = ingest.checked_events(records, cfg, window, start, users, articles)
    losers = ingest.duplicate_losers(checked, ingest.duplicated_ids(checked), None)
    final = ingest.with_duplicates_marked(checked, losers)
    # event_time as text: a refused record's time may lie outside what Python's datetime holds.
    in_window = (F.col("event_time") >= F.lit(window[0])) & (F.col("event_time") < F.lit(window[1]))
    rows = final.select("raw", "reason", "detail", *(F.col(f).cast("string") if f == "event_time" else f
                                                     for f in FIELDS), in_window.alias("in_window")).collect()

    # No loss, no invention: every landed line comes out exactly once, as it came.
    assert Counter(r["raw"] for r in rows) == Counter(line for line, _, _ in examples)
    what_of = {}
    for line, what, fields in examples:
        what_of.setdefault(line, (what, fields))
    copies_kept = Counter()
    for r in rows:
        what, fields = what_of[r["raw"]]
        assert r["reason"] is None or r["reason"] in ingest.REASONS, r
        if r["reason"] in ("missing_field", "bad_type"):
            named = set(r["detail"].split(","))
            assert named and named <= set(FIELDS), r  # names the broken fields
            assert not fields or named & fields or named <= set(REQUIRED), (what, r)
        elif r["reason"] in ("unknown_user", "unknown_article"):
            assert r["detail"] == (r["user_id"] if r["reason"] == "unknown_user" else r["article_id"])
        elif r["reason"] not in (None, "malformed_record"):
            assert r["detail"] is not None, r
        want = expected_reason(r["raw"], what)
        if r["reason"] == "duplicate_event_id":
            copies_kept[r["raw"]] += 0
        elif want != "?":
            assert r["reason"] == want, (what, r)
        if r["reason"] is None:  # what is accepted meets the contract
            copies_kept[r["raw"]] += 1
            assert not any(_blank(r[f]) for f in REQUIRED), r
            assert r["in_window"], r
            assert r["event_type"] in EVENT_TYPES and r["user_id"] in USERS and r["article_id"] in ARTICLES
            assert r["dwell_ms"] is None or 0 <= r["dwell_ms"] <= cfg.max_dwell_ms
            assert r["position"] is None or 0 <= r["position"] <= cfg.max_position
    accepted_ids = [r["event_id"] for r in rows if r["reason"] is None]
    assert len(accepted_ids) == len(set(accepted_ids)), "an accepted event_id twice"
    # A copy refused as a duplicate has its one accepted twin (mutated ids may meet across landings).
    assert all(r["event_id"] in set(accepted_ids) for r in rows if r["reason"] == "duplicate_event_id")
    # Of a line landed twice, at most one copy is accepted.
    assert all(n <= 1 for n in copies_kept.values())


def test_weird_numbers_are_refused_as_bad_types_not_read_as_numbers(spark, make_config, known_ids):
    """NaN, infinities, fractions and numbers beyond 64 bits in the numeric fields, and epoch
    milliseconds whose microseconds would overflow a long (a hypothesis search found 2**62 crashed ingest)."""
    from jobs.common.dates import day_bounds

    cfg = make_config().ingest
    start, end = day_bounds(D, "UTC")
    users, articles = known_ids
    lines, want = [], []
    for n, (field, value) in enumerate([("dwell_ms", math.nan), ("dwell_ms", math.inf), ("position", -math.inf),
                                        ("dwell_ms", 2**80), ("position", 1.5), ("event_time", math.nan),
                                        ("event_time", 2**62), ("event_time", -2**62), ("event_time", 2**63 - 1)]):
        record = base_event(3 * n)
        record[field] = value
        lines.append(json.dumps(record))
        want.append((field, "bad_type"))
    checked = ingest.checked_events(spark.createDataFrame([(x,) for x in lines], "raw string"), cfg,
                                    (start, end), start, users, articles)
    got = {r["raw"]: (r["detail"], r["reason"]) for r in checked.select("raw", "reason", "detail").collect()}
    assert [got[x] for x in lines] == want


# -- file-level bad input, through the whole step ---------------------------------------------------

def _land_good_day(raw: Path) -> None:
    users = [{"user_id": u, "features": {}, "updated_time": START_MS} for u in USERS]
    articles = [{"article_id": a, "publish_time": START_MS - HOUR, "tags": [{"tag": "t1", "weight": 1.0}]}
                for a in ARTICLES]
    write_landing(raw, "users", DAY, users)
    write_landing(raw, "articles", DAY, articles)
    write_landing(raw, "events", DAY, [base_event(n) for n in range(10)])


def test_bytes_that_are_not_utf8_are_refused_with_their_reason(spark, make_config, tmp_path):
    config = make_config()
    raw = tmp_path / "raw"
    _land_good_day(raw)
    folder = raw / "events" / f"dt={DAY}"
    lines = [json.dumps(base_event(20)).replace('"L0-e20"', '"L0-e20-caf\xe9"').encode("latin-1"),  # Latin-1
             json.dumps(base_event(21)).encode().replace(b'"r21"', b'"r21-\xff\xfe"')]  # stray bytes
    (folder / "latin1.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (folder / "empty.jsonl").write_bytes(b"")  # an empty file: no records, nothing to refuse
    report = ingest.STEP.invoke(spark, config, D)
    assert report["balance"]["events"]["balanced"]
    refused = Warehouse(spark, config).read_partition("rejected", DAY).where("source = 'events'").collect()
    assert [r["reason"] for r in refused] == ["bad_encoding", "bad_encoding"]
    # raw shows the bad bytes as U+FFFD; the detail keeps them as they landed.
    by_bytes = {base64.b64decode(r["detail"].rsplit(": ", 1)[1]): r["raw"] for r in refused}
    assert set(by_bytes) == set(lines)
    assert all(raw == line.decode("utf-8", errors="replace") for line, raw in by_bytes.items())
    assert report["sources"]["events"]["accepted"] == 10


def test_a_landed_gzip_file_that_is_not_gzip_stops_ingest_naming_it(spark, make_config, tmp_path):
    config = make_config()
    raw = tmp_path / "raw"
    _land_good_day(raw)
    bad = raw / "events" / f"dt={DAY}" / "part-00001.jsonl.gz"
    bad.write_text(json.dumps(base_event(30)) + "\n")  # plain text under a .gz name
    with pytest.raises(UnreadableFileError) as err:
        ingest.STEP.invoke(spark, config, D)
    message = str(err.value)
    assert "part-00001.jsonl.gz" in message and f"tagrecall ingest --date {DAY}" in message
    assert not Warehouse(spark, config).has_partition("events", DAY)
    # A good copy in its place: the day ingests, the file's record included.
    bad.write_bytes(gzip.compress((json.dumps(base_event(30)) + "\n").encode()))
    assert ingest.STEP.invoke(spark, config, D)["sources"]["events"]["accepted"] == 11


def test_a_truncated_parquet_landing_file_stops_ingest_naming_it(spark, make_config, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    config = make_config(storage={"raw_format": "parquet"})
    raw = tmp_path / "raw"
    tables = {"users": [{"user_id": u, "updated_time": str(START_MS)} for u in USERS],
              "articles": [{"article_id": a, "publish_time": str(START_MS - HOUR),
                            "tags": '[{"tag": "t1", "weight": 1.0}]'} for a in ARTICLES],
              "events": [{k: (None if v is None else str(v)) for k, v in base_event(n).items()} for n in range(10)]}
    for source, rows in tables.items():
        folder = raw / source / f"dt={DAY}"
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), folder / "part-00000.parquet")
    assert ingest.STEP.invoke(spark, config, D)["sources"]["events"]["accepted"] == 10
    target = raw / "events" / f"dt={DAY}" / "part-00000.parquet"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    before = _rows(Path(config.storage.warehouse))
    with pytest.raises(UnreadableFileError) as err:
        ingest.STEP.invoke(spark, config, D)
    assert str(target) in str(err.value) and f"tagrecall ingest --date {DAY}" in str(err.value)
    # The snapshots of D may have been rewritten before the events were read: same rows.
    assert _rows(Path(config.storage.warehouse)) == before


# -- a corrupt file inside the warehouse ------------------------------------------------------------

def _rows(root: Path) -> dict[str, list]:
    """Every partition of the warehouse's tables -> its rows, sorted."""
    import pyarrow.parquet as pq

    return {str(part.relative_to(root)): sorted(map(str, pq.read_table(part).to_pylist()))
            for part in sorted(root.glob("*/dt=*"))}


def _files(root: Path) -> dict[str, str]:
    """Every data file of the warehouse's tables -> a hash of its bytes (run reports and
    locks aside: a failed run records itself)."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.relative_to(root).parts[0].startswith("_")}


@pytest.mark.parametrize("step, table, offset", [("profiles", "user_tag_profile", 1),  # read by Spark
                                                 ("tag_model", "tag_examples", 0)])      # read by pyarrow
def test_a_corrupt_file_in_the_warehouse_names_itself_and_the_step_to_rerun(spark, synthetic_feed, tmp_path,
                                                                            step, table, offset):
    from jobs import profiles, tag_model

    config0, base, dates = synthetic_feed
    shutil.copytree(base / "warehouse", tmp_path / "warehouse")
    config = config0.replace(storage=dataclasses.replace(config0.storage, warehouse=str(tmp_path / "warehouse")))
    day, broken_day = dates[-1], dates[-1 - offset]
    victim = sorted((tmp_path / "warehouse" / table / f"dt={broken_day}").glob("*.parquet"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])
    before = _files(tmp_path / "warehouse")
    run = {"profiles": profiles.STEP, "tag_model": tag_model.STEP}[step]
    with pytest.raises(UnreadableFileError) as err:
        run.invoke(spark, config, day)
    message = str(err.value)
    writer = {"user_tag_profile": "profiles", "tag_examples": "triples"}[table]
    assert victim.name in message and table in message
    assert f"tagrecall {writer} --date {broken_day}" in message and f"tagrecall {step} --date {day}" in message
    assert _files(tmp_path / "warehouse") == before  # nothing else changed


def test_schema_drift_a_new_field_is_ignored_and_a_renamed_required_one_is_named(spark, make_config, known_ids):
    """Upstream adds a field (ignored: the tables keep the contract's columns) and renames a
    required one (every record refused as missing_field naming the contract's name)."""
    from jobs.common.dates import day_bounds

    cfg = make_config().ingest
    start, end = day_bounds(D, "UTC")
    users, articles = known_ids
    added = [json.dumps({**base_event(n), "device": "tv", "ab_bucket": n}) for n in range(3)]
    renamed = [json.dumps({("userId" if k == "user_id" else k): v for k, v in base_event(n + 3).items()})
               for n in range(3)]
    checked = ingest.checked_events(spark.createDataFrame([(x,) for x in added + renamed], "raw string"), cfg,
                                    (start, end), start, users, articles)
    assert "device" not in checked.columns and "userId" not in checked.columns
    got = {r["raw"]: (r["reason"], r["detail"]) for r in checked.collect()}
    assert [got[x] for x in added] == [(None, None)] * 3
    assert [got[x] for x in renamed] == [("missing_field", "user_id")] * 3

    records = spark.createDataFrame([(json.dumps({"article_id": "a9", "publish_time": START_MS,
                                                  "tag_list": [{"tag": "t1", "weight": 1.0}]}),)], "raw string")
    refused = ingest.with_article_checks(ingest.parse_articles(records)).first()
    assert (refused["reason"], refused["detail"]) == ("missing_field", "tags")
