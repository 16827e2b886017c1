"""Ingest step: raw landing of D -> ``events``, ``articles``, ``users`` and ``rejected``.

Every landed record ends in exactly one place: a validated row of its table, or a row of
``rejected`` with its reason (article and user versions superseded by a newer version of
the same id are counted, not rejected). The step checks that invariant against what it
wrote and reports it in ``_runs/ingest/<D>.json``. Above ``ingest.max_reject_ratio`` the
step fails after writing ``rejected`` (so the bad records can be inspected) and before
writing ``events`` (so later steps do not run on a broken day); so it does when the day's
events, users, clicks or CTR are far from their median over the last ingested days
(quality.*, jobs/transforms/quality.py; a warning instead with quality.action = "warn").

Validation is by rules applied in a fixed order; a record is refused for the first rule
it breaks (see REASONS).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import time

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    MapType,
    StringType,
    StructField,
    StructType,
)

from jobs.common.dates import day_bounds
from jobs.common.entry import Step
from jobs.common.landing import raw_dates, read_raw_records
from jobs.common.storage import MissingPartitionError, Warehouse
from jobs.transforms.quality import figures, violations
from schemas.catalog import EVENT_TYPES
from schemas.config import Config, IngestConfig
from schemas.tables import ARTICLES, EVENTS, REJECTED, USERS

log = logging.getLogger(__name__)

NAME = "ingest"

# Reasons a record is refused, in the order the rules are applied.
REASONS = (
    "malformed_record",     # not a JSON object, or text after it (two records on one line)
    "bad_encoding",         # bytes that are not UTF-8 (read as U+FFFD)
    "missing_field",        # a required field is null or empty
    "bad_type",             # a field that does not parse as its type
    "unknown_event_type",
    "negative_dwell",
    "absurd_dwell",         # above ingest.max_dwell_ms
    "bad_position",         # negative or above ingest.max_position
    "bad_tags",             # articles: weight not in (0, 1], empty or repeated tag
    "too_late",             # event_time before D's start minus the late-data tolerance
    "in_future",            # event_time after D's end plus the clock-skew tolerance
    "unknown_user",
    "unknown_article",
    "duplicate_event_id",   # same event_id earlier in the day, or ingested on a recent day
)

_CORRUPT = "_corrupt"


def _string_schema(*names: str) -> StructType:
    # Every field is read as a string so a wrong type is a rule violation, not a lost row.
    return StructType([StructField(n, StringType()) for n in names] + [StructField(_CORRUPT, StringType())])


RAW_EVENT_SCHEMA = _string_schema(*EVENTS.fieldNames())
RAW_ARTICLE_SCHEMA = _string_schema("article_id", "publish_time", "updated_time", "tags")
RAW_USER_SCHEMA = _string_schema("user_id", "features", "updated_time")
RAW_TAGS = ArrayType(StructType([StructField("tag", StringType()), StructField("weight", StringType())]))
RAW_FEATURES = MapType(StringType(), StringType())


# -- small column helpers --------------------------------------------------------------
def with_first_failure(df: DataFrame, rules: list[tuple[Column, str, Column | str | None]]) -> DataFrame:
    """Add ``reason`` (the name of the first rule whose condition holds, else null) and
    ``detail`` (that rule's note). Each condition is computed once into a flag column and
    the flags are then referenced: nesting the conditions into one CASE expression made
    Spark's generated code too large to compile, and it fell back to a slow interpreter.
    A note is only computed for a row its rule refuses."""
    flags = [F.coalesce(cond, F.lit(False)).alias(f"_rule{i}") for i, (cond, _, _) in enumerate(rules)]
    reason = detail = None  # CASE WHEN _rule0 THEN ... WHEN _rule1 THEN ... END
    for i, (_, name, note) in enumerate(rules):
        flag = F.col(f"_rule{i}")
        note = F.lit(None) if note is None else note if isinstance(note, Column) else F.lit(note)
        if reason is None:
            reason, detail = F.when(flag, F.lit(name)), F.when(flag, note.cast("string"))
        else:
            reason, detail = reason.when(flag, F.lit(name)), detail.when(flag, note.cast("string"))
    return (df.select("*", *flags).withColumn("reason", reason).withColumn("detail", detail)
            .drop(*[f"_rule{i}" for i in range(len(rules))]))


def _any(conditions: list[Column]) -> Column:
    return functools.reduce(lambda a, b: a | b, conditions)


def _names_where(named: list[tuple[Column, str]]) -> Column:
    """The names whose condition holds, comma-separated."""
    return F.concat_ws(",", *[F.when(c, F.lit(n)) for c, n in named])


# What ``_strip`` removes from both ends of a text field, and what a blank field holds only:
# control characters (Unicode Cc) and separators (Z: spaces, line and paragraph separators),
# so an id of "\r" or U+3000 is missing, not an id.
BLANK_CHARACTERS = "".join(map(chr, [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x20, 0xA0, 0x1680,
                                     *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]))


def _strip(c: Column | str) -> Column:
    c = F.col(c) if isinstance(c, str) else c
    # Most values start and end with printable ASCII, which btrim would keep: skip its
    # character-set search for them (it was half the cost of checking an event).
    first, last = F.ascii(c), F.ascii(F.substring(c, -1, 1))
    printable_ends = (first > 0x20) & (first < 0x7F) & (last > 0x20) & (last < 0x7F)
    return F.when(printable_ends, c).otherwise(F.btrim(c, F.lit(BLANK_CHARACTERS)))


def _blank(c: Column) -> Column:
    return c.isNull() | (_strip(c) == "")


# Epoch milliseconds are read up to the year 9999; beyond that timestamp_millis would overflow a long.
MAX_EPOCH_MS = 253_402_300_799_999


def parse_time(c: Column) -> Column:
    """Epoch milliseconds (|ms| up to the year 9999), or an ISO-8601 timestamp (naive ones in the
    session time zone). try_* on purpose: this is the ingest boundary, where bad values become reasons."""
    ms = c.try_cast("bigint")
    return F.coalesce(F.when(F.abs(ms) <= MAX_EPOCH_MS, F.timestamp_millis(ms)), F.try_to_timestamp(c))


def _bad_parse(raw_value: Column, parsed: Column) -> Column:
    return raw_value.isNotNull() & parsed.isNull()


def _malformed(first_field: str) -> Column:
    """Not a JSON object, or a blank line. A blank line parses to all fields null, so its
    text is only scanned when ``first_field`` (a field every record has) is null."""
    return F.col(_CORRUPT).isNotNull() | (F.col(first_field).isNull() & _blank(F.col("raw")))


def _text_after_the_object() -> Column:
    """Text after a record's JSON object on its line: ``{...} x``, or records run together
    (``{...}{...}``, ``{...}, {...}``), which the JSON reader would read as the first alone.
    A line whose first ``}`` is its last character but spaces (every flat record) passes at
    the cost of two string functions. Any other is parsed twice more, by the reader the
    record went through (``from_json``, so what it accepts, NaN included, passes), as the
    elements of a JSON array: ``[line]`` must hold one value and ``[line,line]`` two. The
    reader stops at the array's end, so text behind a ``]`` right after the object passes
    the first test and fails the second."""
    raw = F.col("raw")
    flat = F.instr(raw, "}") == F.length(F.rtrim(raw))

    def values(text: Column) -> Column:
        return F.size(F.from_json(text, ArrayType(StringType())))

    one_value = ((values(F.concat(F.lit("["), raw, F.lit("]"))) == 1)
                 & (values(F.concat(F.lit("["), raw, F.lit(","), raw, F.lit("]"))) == 2))
    return ~(flat | F.coalesce(one_value, F.lit(False)))


_TEXT_AFTER = "text after the JSON object: one record a line"


# A landed line whose bytes are not UTF-8 is refused: its ``raw`` in ``rejected`` shows them
# as U+FFFD (so every reader can decode it) and its detail holds the bytes as they landed.
_BAD_BYTES = "_bad_bytes"


def _bad_encoding() -> tuple[Column, str, Column]:
    return (F.col(_BAD_BYTES).isNotNull(), "bad_encoding",
            F.concat(F.lit("not valid UTF-8 (shown as U+FFFD in raw); the landed bytes in base64: "),
                     F.col(_BAD_BYTES)))


def parse_json_records(records: DataFrame, schema: StructType) -> DataFrame:
    """raw -> raw + the schema's fields as strings; a record that is not a JSON object has
    all fields null and its text in ``_corrupt``; one whose bytes are not UTF-8 has them in
    ``_bad_bytes`` (base64) and U+FFFD in their place in ``raw``."""
    # The validity test is one subexpression of both columns (evaluated once per row); the
    # repair, a second pass over the text, only runs for a line that needs it.
    valid = F.is_valid_utf8("raw")
    bad_bytes = F.when(~valid, F.base64(F.col("raw").cast("binary")))
    repaired = F.when(valid, F.col("raw")).otherwise(F.make_valid_utf8("raw"))
    return records.select(repaired.alias("raw"), bad_bytes.alias(_BAD_BYTES)).select(
        "raw", _BAD_BYTES, F.from_json("raw", schema, {
            "mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT}).alias("r")).select("raw", _BAD_BYTES, "r.*")


# -- events --------------------------------------------------------------------------------
def parse_events(records: DataFrame) -> DataFrame:
    return parse_json_records(records, RAW_EVENT_SCHEMA)


def with_event_checks(events: DataFrame, *, window_start: dt.datetime, window_end: dt.datetime,
                      max_dwell_ms: int, max_position: int) -> DataFrame:
    """Typed columns plus ``reason``/``detail`` of the first broken rule that needs no
    other table (ids are checked against users and articles in ``with_known_ids``)."""
    typed = events.select(
        "raw", _BAD_BYTES, _CORRUPT,
        F.col("event_id").alias("s_event_id"), F.col("user_id").alias("s_user_id"),
        F.col("article_id").alias("s_article_id"), F.col("event_type").alias("s_event_type"),
        F.col("event_time").alias("s_event_time"), F.col("dwell_ms").alias("s_dwell_ms"),
        F.col("position").alias("s_position"), F.col("request_id"),
    ).select(
        "*",
        _strip("s_event_id").alias("event_id"), _strip("s_user_id").alias("user_id"),
        _strip("s_article_id").alias("article_id"), F.lower(_strip("s_event_type")).alias("event_type"),
        parse_time(F.col("s_event_time")).alias("event_time"),
        F.col("s_dwell_ms").try_cast("bigint").alias("dwell_ms"),
        F.col("s_position").try_cast("int").alias("position"),
    )
    # The stripped ids are at hand: a blank one is null or empty once stripped.
    missing = [(F.col(f"s_{name}").isNull() | (F.col(name) == ""), name) for name in
               ("event_id", "user_id", "article_id", "event_type")] + [(_blank(F.col("s_event_time")), "event_time")]
    bad_types = [(_bad_parse(F.col(f"s_{name}"), F.col(name)), name) for name in ("event_time", "dwell_ms", "position")]
    lower, upper = F.lit(window_start), F.lit(window_end)
    checked = typed.transform(with_first_failure, [
        (_malformed("s_event_id"), "malformed_record", None),
        (_text_after_the_object(), "malformed_record", _TEXT_AFTER),
        _bad_encoding(),
        (_any([c for c, _ in missing]), "missing_field", _names_where(missing)),
        (_any([c for c, _ in bad_types]), "bad_type", _names_where(bad_types)),
        (~F.col("event_type").isin(*EVENT_TYPES), "unknown_event_type", F.col("s_event_type")),
        (F.col("dwell_ms") < 0, "negative_dwell", F.col("dwell_ms")),
        (F.col("dwell_ms") > max_dwell_ms, "absurd_dwell", F.col("dwell_ms")),
        ((F.col("position") < 0) | (F.col("position") > max_position), "bad_position", F.col("position")),
        (F.col("event_time") < lower, "too_late", F.col("event_time")),
        (F.col("event_time") >= upper, "in_future", F.col("event_time")),
    ])
    return checked.select(*EVENTS.fieldNames(), "raw", "reason", "detail")


def with_known_ids(events: DataFrame, users: DataFrame, articles: DataFrame) -> DataFrame:
    """Refuse events whose user or article is not in D's snapshots."""
    known_users = users.select("user_id", F.lit(True).alias("_user_known"))
    known_articles = articles.select("article_id", F.lit(True).alias("_article_known"))
    joined = events.join(known_users, "user_id", "left").join(known_articles, "article_id", "left")
    unknown_user = F.col("reason").isNull() & F.col("_user_known").isNull()
    unknown_article = F.col("reason").isNull() & F.col("_article_known").isNull()
    return (joined
            .withColumn("detail", F.when(unknown_user, F.col("user_id"))
                        .when(unknown_article, F.col("article_id")).otherwise(F.col("detail")))
            .withColumn("reason", F.when(unknown_user, F.lit("unknown_user"))
                        .when(unknown_article, F.lit("unknown_article")).otherwise(F.col("reason")))
            .drop("_user_known", "_article_known"))


def duplicated_ids(events: DataFrame) -> DataFrame:
    """The event_ids of more than one otherwise valid event, each with the row id of the
    copy kept (``_keep_row``): the copy with the least hash of its text ``_h``, so the same
    text on every run (barring a 64-bit hash collision between two copies' texts); copies
    with the same hash are the same text, so which of them is kept changes no table.
    One narrow aggregate (a shuffle of three columns, fixed-width buffers) instead of a
    window over whole rows; only the few duplicated ids come out of it."""
    return (events.where(F.col("reason").isNull())
            .groupBy("event_id").agg(F.count(F.lit(1)).alias("_copies"), F.min_by("_row", "_h").alias("_keep_row"))
            .where(F.col("_copies") > 1).select("event_id", "_keep_row"))


def duplicate_losers(events: DataFrame, dup_ids: DataFrame, seen_ids: DataFrame | None) -> DataFrame:
    """Rows (``_row``) to refuse as duplicates, with a detail: every copy of a duplicated
    id but the one kept (``dup_ids``, from ``duplicated_ids``), and every valid event whose
    id was already ingested on a recent day (``seen_ids``: column event_id)."""
    valid = events.where(F.col("reason").isNull())
    # dup_ids is read back from scratch by the step, so Spark knows its size and broadcasts
    # it when small (the usual day) and sort-merges when a day is mostly copies.
    repeated = (valid.select("event_id", "_row").join(dup_ids, "event_id")
                .where(F.col("_row") != F.col("_keep_row"))
                .select("_row", F.lit("repeated within the day").alias("_dup_detail")))
    if seen_ids is None:
        return repeated
    # Only events an earlier day could have accepted (``_early``: dated before D's start plus
    # the clock skew D-1 allows) can have landed on one, so the join's small side is those, broadcast.
    early = valid.where(F.col("_early")).select("event_id", "_row")
    seen = (seen_ids.join(F.broadcast(early), "event_id")
            .select("_row", F.lit("ingested on an earlier day").alias("_dup_detail")))
    # An id seen before is refused in every copy; the earlier-day detail wins.
    return seen.unionByName(repeated).groupBy("_row").agg(F.min("_dup_detail").alias("_dup_detail"))


def with_duplicates_marked(events: DataFrame, losers: DataFrame) -> DataFrame:
    marked = events.join(F.broadcast(losers), "_row", "left")
    is_dup = F.col("_dup_detail").isNotNull()
    return (marked.withColumn("detail", F.when(is_dup, F.col("_dup_detail")).otherwise(F.col("detail")))
            .withColumn("reason", F.when(is_dup, F.lit("duplicate_event_id")).otherwise(F.col("reason")))
            .drop("_dup_detail"))


# -- articles and users --------------------------------------------------------------------
def parse_articles(records: DataFrame) -> DataFrame:
    parsed = parse_json_records(records, RAW_ARTICLE_SCHEMA)
    return parsed.select(
        "raw", _BAD_BYTES, _CORRUPT,
        F.col("article_id").alias("s_article_id"), F.col("publish_time").alias("s_publish_time"),
        F.col("updated_time").alias("s_updated_time"), F.col("tags").alias("s_tags"),
        _strip("article_id").alias("article_id"),
        parse_time(F.col("publish_time")).alias("publish_time"),
        parse_time(F.col("updated_time")).alias("updated_time_given"),
        F.from_json("tags", RAW_TAGS).alias("raw_tags"),
    ).withColumn("tags", F.transform("raw_tags", lambda t: F.struct(
        _strip(t["tag"]).alias("tag"), t["weight"].try_cast("double").alias("weight"))))


def with_article_checks(articles: DataFrame) -> DataFrame:
    tags = F.col("tags")
    bad_weight = F.exists(tags, lambda t: t["weight"].isNull() | ~(t["weight"] > 0) | (t["weight"] > 1))
    bad_tag = F.exists(tags, lambda t: _blank(t["tag"]))
    repeated = F.size(F.array_distinct(F.transform(tags, lambda t: t["tag"]))) != F.size(tags)
    missing = [(_blank(F.col("s_article_id")), "article_id"), (_blank(F.col("s_publish_time")), "publish_time"),
               (F.col("s_tags").isNull(), "tags")]
    bad_types = [(_bad_parse(F.col("s_publish_time"), F.col("publish_time")), "publish_time"),
                 (_bad_parse(F.col("s_updated_time"), F.col("updated_time_given")), "updated_time"),
                 (_bad_parse(F.col("s_tags"), F.col("raw_tags")), "tags")]
    checked = articles.transform(with_first_failure, [
        (_malformed("s_article_id"), "malformed_record", None),
        (_text_after_the_object(), "malformed_record", _TEXT_AFTER),
        _bad_encoding(),
        (_any([c for c, _ in missing]), "missing_field", _names_where(missing)),
        (_any([c for c, _ in bad_types]), "bad_type", _names_where(bad_types)),
        (bad_weight | bad_tag | repeated, "bad_tags", F.col("s_tags")),
    ])
    return checked.select(
        "article_id", "publish_time",
        F.coalesce("updated_time_given", "publish_time").alias("updated_time"),
        "tags", "raw", "reason", "detail")


def parse_users(records: DataFrame) -> DataFrame:
    parsed = parse_json_records(records, RAW_USER_SCHEMA)
    return parsed.select(
        "raw", _BAD_BYTES, _CORRUPT, F.col("user_id").alias("s_user_id"), F.col("features").alias("s_features"),
        F.col("updated_time").alias("s_updated_time"),
        _strip("user_id").alias("user_id"),
        F.from_json("features", RAW_FEATURES).alias("features"),
        parse_time(F.col("updated_time")).alias("updated_time"))


def with_user_checks(users: DataFrame, *, landed_at: dt.datetime) -> DataFrame:
    bad_types = [(_bad_parse(F.col("s_features"), F.col("features")), "features"),
                 (_bad_parse(F.col("s_updated_time"), F.col("updated_time")), "updated_time")]
    checked = users.transform(with_first_failure, [
        (_malformed("s_user_id"), "malformed_record", None),
        (_text_after_the_object(), "malformed_record", _TEXT_AFTER),
        _bad_encoding(),
        (_blank(F.col("s_user_id")), "missing_field", "user_id"),
        (_any([c for c, _ in bad_types]), "bad_type", _names_where(bad_types)),
    ])
    # A user record without updated_time is as new as the day it landed.
    return checked.select(
        "user_id",
        F.coalesce("features", F.create_map().cast(RAW_FEATURES)).alias("features"),
        F.coalesce("updated_time", F.lit(landed_at)).alias("updated_time"),
        "raw", "reason", "detail")


def latest_versions(versions: DataFrame, key: str, *, order: list[Column]) -> DataFrame:
    """One row per ``key``: the greatest by ``order`` (descending); ties by a content hash
    so the choice is the same on every run."""
    from pyspark.sql import Window

    # to_json because Spark refuses to hash maps directly.
    content = F.xxhash64(F.to_json(F.struct(*[c for c in versions.columns if c not in (key, "_landed")])))
    w = Window.partitionBy(key).orderBy(*[o.desc() for o in order], content.desc())
    return versions.withColumn("_n", F.row_number().over(w)).where(F.col("_n") == 1).drop("_n")


def snapshot(previous: DataFrame | None, accepted: DataFrame, key: str, columns: list[str]) -> DataFrame:
    """As-of-D snapshot: each id's latest version among yesterday's snapshot and D's
    accepted versions (a version landing on D wins a tie on updated_time)."""
    today = accepted.select(*columns, F.lit(1).alias("_landed"))
    versions = today if previous is None else previous.select(*columns, F.lit(0).alias("_landed")).unionByName(today)
    return latest_versions(versions, key, order=[F.col("updated_time"), F.col("_landed")]).select(*columns)


# -- the step: pure pieces --------------------------------------------------------------------
class RejectRatioExceeded(RuntimeError):
    pass


class VolumeOutOfBounds(RuntimeError):
    """D's volume is far from the trailing median (quality.action = "fail")."""


def volume_history(wh: Warehouse, date: dt.date, days: int) -> list[dict]:
    """The volume figures of the succeeded ingest runs among the ``days`` days before ``date``."""
    out = []
    for k in range(1, days + 1):
        try:
            report = wh.read_run_report(NAME, (date - dt.timedelta(days=k)).isoformat())
        except MissingPartitionError:
            continue
        if report.get("status") == "succeeded" and report.get("quality", {}).get("figures"):
            out.append(report["quality"]["figures"])
    return out


def check_volume(wh: Warehouse, config: Config, date: dt.date, accepted: DataFrame, quality: dict) -> list[str]:
    """Fill ``quality`` (the run report's) with D's figures and their violations."""
    q = config.quality
    row = accepted.agg(F.count(F.lit(1)).alias("events"), F.countDistinct("user_id").alias("users"),
                       F.sum((F.col("event_type") == "impression").cast("long")).alias("impressions"),
                       F.sum((F.col("event_type") == "click").cast("long")).alias("clicks")).first()
    today = figures(row["events"], row["users"], row["impressions"] or 0, row["clicks"] or 0)
    history = volume_history(wh, date, q.window_days) if q.action != "off" else []
    problems = violations(today, history, q.min_days, q.max_volume_ratio, q.max_ctr_ratio)
    quality.update(action=q.action, figures=today, days_compared=len(history), violations=problems)
    return problems


def rejected_rows(df: DataFrame, source: str) -> DataFrame:
    return df.where(F.col("reason").isNotNull()).select(F.lit(source).alias("source"), "raw", "reason", "detail")


def counts_by_reason(df: DataFrame) -> dict[str | None, int]:
    return {r["reason"]: r["count"] for r in df.groupBy("reason").count().collect()}


def source_counts(by_reason: dict[str | None, int]) -> dict:
    """{landed, accepted, rejected: {reason: n}} from counts per reason (None = accepted)."""
    return {"landed": sum(by_reason.values()), "accepted": by_reason.get(None, 0),
            "rejected": {k: v for k, v in by_reason.items() if k is not None}}


def reject_ratios(counts: dict[str, dict], cfg: IngestConfig) -> tuple[dict[str, float], dict[str, float]]:
    """(share refused per source, the sources above ingest.max_reject_ratio that landed at
    least ingest.reject_ratio_min_records records)."""
    ratios = {s: (sum(c["rejected"].values()) / c["landed"] if c["landed"] else 0.0) for s, c in counts.items()}
    over = {s: r for s, r in ratios.items()
            if r > cfg.max_reject_ratio and counts[s]["landed"] >= cfg.reject_ratio_min_records}
    return ratios, over


def balance(counts: dict[str, dict], events_written: int, rejected_written: dict[str, int]) -> dict[str, dict]:
    """The no-loss check per source: landed == accepted + refused rows written to
    ``rejected``, and for events also accepted == rows written to ``events``."""
    out = {}
    for source, c in counts.items():
        refused = rejected_written.get(source, 0)
        ok = c["landed"] == c["accepted"] + refused
        if source == "events":
            ok = ok and events_written == c["accepted"]
        out[source] = {"landed": c["landed"], "accepted": c["accepted"], "rejected": refused, "balanced": ok}
    return out


def checked_events(records: DataFrame, cfg: IngestConfig, window: tuple[dt.datetime, dt.datetime],
                   day_start: dt.datetime, users: DataFrame, articles: DataFrame) -> DataFrame:
    """Raw event records -> typed rows with ``reason``/``detail`` of every rule but the
    duplicate search, plus ``_early`` (dated early enough for an earlier day to have
    accepted it: D-1 accepts up to D's start plus the clock skew), a hash of the record's
    text ``_h`` (which copy of a duplicated id is kept) and a row id ``_row``."""
    earlier_days_until = day_start + dt.timedelta(minutes=cfg.clock_skew_minutes)
    return (parse_events(records)
            .transform(with_event_checks, window_start=window[0], window_end=window[1],
                       max_dwell_ms=cfg.max_dwell_ms, max_position=cfg.max_position)
            .transform(with_known_ids, users=users, articles=articles)
            .withColumn("_early", F.col("event_time") < F.lit(earlier_days_until))
            .withColumn("_h", F.xxhash64("raw"))
            .withColumn("_row", F.monotonically_increasing_id()))


def lookback_days(cfg: IngestConfig) -> int:
    """Earlier days whose events a late event of D may duplicate."""
    return max(1, math.ceil((cfg.late_tolerance_hours * 60 + cfg.clock_skew_minutes) / (24 * 60)))


# -- the step: I/O ---------------------------------------------------------------------------
def _bootstrap_versions(spark, config, source, date, parse, check) -> DataFrame | None:
    """Valid versions from landed partitions before ``date`` (used when no snapshot of
    D-1 exists yet: the first day, or a warehouse rebuilt from raw)."""
    earlier = [d for d in raw_dates(spark, config, source) if d < date]
    if not earlier:
        return None
    log.info("no %s snapshot for the day before %s: rebuilding it from %d landed day(s)",
             source, date, len(earlier))
    return _union([check(parse(read_raw_records(spark, config, source, d)), d).where(F.col("reason").isNull())
                   for d in earlier])


def _snapshot_sources(spark: SparkSession, config: Config, wh: Warehouse, date: dt.date, timed, cached: list):
    """Write D's articles and users snapshots; (counts per source, rejected frames)."""
    day, previous_day = date.isoformat(), (date - dt.timedelta(days=1)).isoformat()

    def user_check(df, d):
        # A user record without updated_time is as new as the end of the day it landed.
        landed_at = day_bounds(dt.date.fromisoformat(d), config.time.timezone)[1] - dt.timedelta(microseconds=1)
        return with_user_checks(df, landed_at=landed_at)

    sources = {
        "articles": (parse_articles, lambda df, _d: with_article_checks(df), "article_id", ARTICLES.fieldNames()),
        "users": (parse_users, user_check, "user_id", USERS.fieldNames()),
    }
    counts, rejected = {}, []
    for source, (parse, check, key, columns) in sources.items():
        checked = check(parse(read_raw_records(spark, config, source, day)), day).cache()  # a day of records
        cached.append(checked)
        if wh.has_partition(source, previous_day):
            previous = wh.read_partition(source, previous_day)
        else:
            previous = _bootstrap_versions(spark, config, source, day, parse, check)
            previous = None if previous is None else previous.select(*columns)
        snap = snapshot(previous, checked.where(F.col("reason").isNull()), key, columns)
        timed(f"write_{source}", lambda s=snap, n=source: wh.write_partition(s, n, day))
        counts[source] = source_counts(timed(f"count_{source}", lambda c=checked: counts_by_reason(c)))
        rejected.append(rejected_rows(checked, source))
    return counts, rejected


def _union(frames: list[DataFrame]) -> DataFrame:
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def _events(spark: SparkSession, config: Config, wh: Warehouse, date: dt.date, window, day_start, counts: dict,
            rejected: list[DataFrame], timed, on_failure, quality: dict) -> None:
    """Check D's events against D's snapshots, write ``rejected`` (all sources), then
    ``events`` unless a reject ratio is too high or the volume gate fails (``on_failure``
    records the report first; ``quality`` receives the gate's figures)."""
    day, ing = date.isoformat(), config.ingest
    checked = checked_events(read_raw_records(spark, config, "events", day), ing, window, day_start,
                             wh.read_partition("users", day), wh.read_partition("articles", day))
    # The parsed, checked day is read several times below (duplicates, counts, the two
    # outputs): parse the JSON once into scratch Parquet.
    with wh.scratch(f"ingest-{day}") as stage:
        checked = timed("parse_events", lambda: stage(checked, "checked"))
        earlier = wh.read_partitions("events", [(date - dt.timedelta(days=k)).isoformat()
                                                for k in range(1, lookback_days(ing) + 1)])
        seen_ids = None if earlier is None else earlier.select("event_id")
        dup_ids = timed("find_duplicates", lambda: stage(duplicated_ids(checked), "duplicated_ids"))
        losers = timed("mark_duplicates", lambda: stage(duplicate_losers(checked, dup_ids, seen_ids), "duplicates"))
        final = with_duplicates_marked(checked, losers)
        counts["events"] = source_counts(timed("validate_events", lambda: counts_by_reason(final)))
        rejected.append(rejected_rows(final, "events"))
        timed("write_rejected", lambda: wh.write_partition(
            _union(rejected).select(*REJECTED.fieldNames()), "rejected", day))
        _, over = reject_ratios(counts, ing)
        problems = [] if over else timed("check_volume", lambda: check_volume(
            wh, config, date, final.where(F.col("reason").isNull()), quality))
        if problems and config.quality.action == "fail":
            on_failure()
            raise VolumeOutOfBounds(
                f"ingest {day}: {'; '.join(problems)}. The landing of {day} may be incomplete: check it, then "
                f"re-run this date (or, for a day that really is unusual, re-run with --set quality.action=warn). "
                f"events of {day} were not written.")
        for problem in problems:
            log.warning("ingest %s: %s (quality.action = %s)", day, problem, config.quality.action)
        if over:
            on_failure()
            worst = ", ".join(f"{s} {r:.1%}" for s, r in over.items())
            raise RejectRatioExceeded(
                f"ingest {day}: reject ratio above ingest.max_reject_ratio={ing.max_reject_ratio:.1%} "
                f"({worst}). Refused records are in {wh.partition_location('rejected', day)} with their "
                "reasons; fix the upstream export or raise the threshold, then re-run this date.")
        events = final.where(F.col("reason").isNull()).select(*EVENTS.fieldNames())
        timed("write_events", lambda: wh.write_partition(events, "events", day))


def _verified(wh: Warehouse, day: str, counts: dict) -> tuple[dict, dict, dict]:
    """(balance, rows written, rejected rows written per source), counted from the tables;
    RuntimeError when a source does not balance."""
    written = {name: wh.row_count(name, day) for name in ("events", "articles", "users")}
    rejected_written = {r["source"]: r["count"] for r in
                        wh.read_partition("rejected", day).groupBy("source").count().collect()}
    balanced = balance(counts, written["events"], rejected_written)
    for source, b in balanced.items():
        if not b["balanced"]:
            raise RuntimeError(f"ingest {day}: {source} do not balance: landed {b['landed']}, "
                               f"accepted {b['accepted']}, rejected written {b['rejected']}")
    return balanced, written, rejected_written


def run(spark: SparkSession, config: Config, date: dt.date) -> dict:
    """Ingest the landing of ``date``; returns the run report (also written to _runs)."""
    started = time.monotonic()
    day = date.isoformat()
    wh = Warehouse(spark, config)
    start, end = day_bounds(date, config.time.timezone)
    late_start = start - dt.timedelta(hours=config.ingest.late_tolerance_hours)
    skew_end = end + dt.timedelta(minutes=config.ingest.clock_skew_minutes)
    timings: dict[str, float] = {}

    def timed(label, fn):
        t0 = time.monotonic()
        out = fn()
        timings[label] = round(time.monotonic() - t0, 3)
        return out

    report = {"step": NAME, "date": day, "window": {"start": start.isoformat(), "end": end.isoformat(),
                                                    "accepts_from": late_start.isoformat(),
                                                    "accepts_until": skew_end.isoformat()},
              "config": config.to_dict()}

    def finish(status: str, **extra) -> None:
        report.update(status=status, sources=counts, reject_ratio=reject_ratios(counts, config.ingest)[0],
                      quality=quality,
                      timings_sec=timings, seconds=round(time.monotonic() - started, 3), **extra)
        wh.write_run_report(NAME, day, report)

    cached: list[DataFrame] = []
    quality: dict = {}
    try:
        # Articles and users first: events are checked against the snapshots of D.
        counts, rejected = _snapshot_sources(spark, config, wh, date, timed, cached)
        _events(spark, config, wh, date, (late_start, skew_end), start, counts, rejected, timed,
                on_failure=lambda: finish("failed"), quality=quality)
    finally:
        for df in cached:
            df.unpersist()
    # No record lost: what was landed equals what was written, counted from the tables.
    balanced, written, rejected_written = timed("verify", lambda: _verified(wh, day, counts))
    finish("succeeded", balance=balanced, rows_written=written, rows_written_rejected=rejected_written)
    log.debug("ingest %s: %d events accepted, %d refused, %.1fs", day, counts["events"]["accepted"],
              sum(counts["events"]["rejected"].values()), report["seconds"])
    return report


STEP = Step(NAME, run, summary="validate D's raw landing into events, articles, users and rejected")
main = STEP.main

if __name__ == "__main__":
    raise SystemExit(main())
