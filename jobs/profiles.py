"""Profiles step: ``events`` and ``articles`` -> ``user_tag_profile`` (DESIGN.md, "The arithmetic").

For every configured horizon h (profiles.half_life_days, by default long = 30 days and
short = 3 days) the weight of user u on tag t at the end T_D of day D is

    W_h(u, t, D) = sum over u's events e up to D:  s(e) * a(article(e), t) * 2^(-(T_D - time(e)) / H_h)

Signal s(e): profiles.event_weights[type], and for a click a bounded dwell term
``dwell_weight * min(log1p(dwell_sec) / log1p(dwell_cap_sec), 1)``. The logarithm because
dwell is heavy-tailed and its value to interest saturates: 60 s says much more than 6 s,
600 s little more than 300 s; the cap keeps one tab left open from outweighing a like.
a(article, t) is the article's tag weight, from the articles snapshot of the event's day.
Decayed ``impressions`` and ``clicks`` (unweighted counts of impressions and clicks of
articles carrying t, on the profiles.counts_horizon half-life) give the user's own
click-through rate on a tag.

Incremental: W_h(D) = W_h(D-1) * 2^(-(T_D - T_{D-1}) / H_h) + D's contribution, so the daily
job reads one day of events and yesterday's profile. When D-1's profile is missing (or with
``--full``) the step computes the sum above over every events partition up to D.
Late events (event time before D's start, landed in D's partition) enter D's contribution
with their true age T_D - time(e); yesterday's profile could not contain them, so nothing is
counted twice or lost, and the incremental result equals the full one.

Users without events on D only decay: their rows are carried forward without a shuffle
(``incremental``), when D's active users number at most profiles.idle_path_max_users
(they are broadcast to split the profile) and at least profiles.idle_path_min_idle_share
of D-1's users are idle (else the split costs more than it saves). A smaller
max_tags_per_user reaches an idle user's rows on their next active day, or at once with
``--full``.

Layout: the profile is stored bucketed by user_id in profiles.buckets files
(jobs/common/storage.py, ``Bucketing``). The next day shuffles D's contribution alone into
the same buckets (written to the step's scratch folder), then reads it and D-1's profile as
one bucketed scan, already partitioned by user: the merge's sum, the per-user windows and
the write need no other shuffle. A profile stored plain or with another count is shuffled
once with D's contribution and written with the configured count.

Bounds: a row is dropped when all its horizon weights and its decayed impressions are below
profiles.min_weight. Then each user keeps profiles.max_tags_per_user tags, ranked by their
largest share of one horizon's total (max over h of W_h(u, t) / sum_t' W_h(u, t')), ties by
impressions then tag: a short-term interest that dominates the last days survives next to
long-term ones, although short weights are smaller in absolute terms. Pruning makes the
incremental profile differ from a full recomputation only in rows that were pruned.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs.common.dates import day_bounds
from jobs.common.entry import Option, Step
from jobs.common.storage import Bucketing, MissingPartitionError, Warehouse
from jobs.transforms.decay import age_seconds, decay, decay_factor
from schemas.catalog import PARTITION_COLUMN
from schemas.config import Config, ProfilesConfig
from schemas.tables import user_tag_profile_schema

log = logging.getLogger(__name__)

NAME = "profiles"
TABLE = "user_tag_profile"
# The merge's input rows say whether they come from D-1's profile or D's contribution.
SOURCE, PREVIOUS, TODAY = "_source", "previous", "today"


def weight_columns(cfg: ProfilesConfig) -> list[str]:
    return [f"{h}_weight" for h in cfg.half_life_days]


def profile_columns(cfg: ProfilesConfig) -> list[str]:
    return user_tag_profile_schema(list(cfg.half_life_days)).fieldNames()


def signal(cfg: ProfilesConfig) -> Column:
    """s(e) for each event row: the event type's weight plus, for clicks, the dwell term."""
    weights = F.create_map(*[x for k, v in sorted(cfg.event_weights.items()) for x in (F.lit(k), F.lit(v))])
    base = F.coalesce(weights[F.col("event_type")], F.lit(0.0))
    dwell_sec = F.greatest(F.col("dwell_ms").cast("double") / 1000.0, F.lit(0.0))
    dwell = F.least(F.log1p(dwell_sec) / math.log1p(cfg.dwell_cap_sec), F.lit(1.0)) * cfg.dwell_weight
    return base + F.when((F.col("event_type") == "click") & F.col("dwell_ms").isNotNull(), dwell).otherwise(0.0)


def article_tags(articles: DataFrame) -> DataFrame:
    """(dt, article_id, tag, tag_weight): one row per tag of each article snapshot."""
    return (articles.select(PARTITION_COLUMN, "article_id", F.explode("tags").alias("t"))
            .select(PARTITION_COLUMN, "article_id", F.col("t.tag").alias("tag"),
                    F.col("t.weight").alias("tag_weight")))


def by_user(df: DataFrame, buckets: int) -> DataFrame:
    """``df`` hash-partitioned by user_id into ``buckets`` partitions (the layout of a
    profile bucketed so), or into the session's shuffle partitions when ``buckets`` is 0."""
    return df.repartition(buckets, "user_id") if buckets else df.repartition("user_id")


def contribution(events: DataFrame, articles: DataFrame, end: dt.datetime, cfg: ProfilesConfig,
                 buckets: int = 0) -> DataFrame:
    """The sum of the formula over ``events`` at time ``end``, per (user_id, tag),
    partitioned ``by_user`` into ``buckets``.

    Both inputs carry ``dt``: each event takes its tags from its own day's articles
    snapshot. Events are first reduced to one row per (dt, user, article), then joined to
    the articles' tags: the join sees far fewer rows than there are events. The events'
    few columns are shuffled by user once, first: the reduction, the (broadcast) join and
    the sum per (user, tag) run on that partitioning, which is also the profile's."""
    age = age_seconds(F.col("event_time"), end.timestamp())
    sig = signal(cfg)
    is_imp = (F.col("event_type") == "impression").cast("double")
    is_click = (F.col("event_type") == "click").cast("double")
    count_decay = decay(age, cfg.half_life_days[cfg.counts_horizon])
    per_article = (
        by_user(events.select(PARTITION_COLUMN, "user_id", "article_id", "event_time",
                              *[(sig * decay(age, h)).alias(f"_{name}") for name, h in cfg.half_life_days.items()],
                              (is_imp * count_decay).alias("_imp"), (is_click * count_decay).alias("_clk")), buckets)
        .groupBy(PARTITION_COLUMN, "user_id", "article_id")
        .agg(*[F.sum(f"_{name}").alias(f"_{name}") for name in cfg.half_life_days],
             F.sum("_imp").alias("_imp"), F.sum("_clk").alias("_clk"),
             F.max("event_time").alias("_last"))
    )
    joined = per_article.join(article_tags(articles), [PARTITION_COLUMN, "article_id"])
    return (joined.groupBy("user_id", "tag")
            .agg(*[F.sum(F.col(f"_{name}") * F.col("tag_weight")).alias(f"{name}_weight")
                   for name in cfg.half_life_days],
                 F.sum("_imp").alias("impressions"), F.sum("_clk").alias("clicks"),
                 F.max("_last").alias("last_event_time")))


def forward_factors(seconds: float, cfg: ProfilesConfig) -> dict[str, float]:
    """The factor each decayed column of a profile is multiplied by when it moves forward
    in time by ``seconds``: its horizon's for a weight, the counts horizon's for the counts."""
    counts = decay_factor(seconds, cfg.half_life_days[cfg.counts_horizon])
    return {**{f"{name}_weight": decay_factor(seconds, h) for name, h in cfg.half_life_days.items()},
            "impressions": counts, "clicks": counts}


def decayed(profile: DataFrame, seconds: float, cfg: ProfilesConfig) -> DataFrame:
    """A profile moved forward in time by ``seconds`` (no new events)."""
    return profile.select("user_id", "tag",
                          *[(F.col(c) * f).alias(c) for c, f in forward_factors(seconds, cfg).items()],
                          "last_event_time")


def sourced(previous: DataFrame, today: DataFrame, cfg: ProfilesConfig) -> DataFrame:
    """The rows of D-1's profile and of D's contribution in one frame, SOURCE naming which."""
    cols = profile_columns(cfg)
    return (previous.select(*cols, F.lit(PREVIOUS).alias(SOURCE))
            .unionByName(today.select(*cols, F.lit(TODAY).alias(SOURCE))))


def merged(rows: DataFrame, seconds: float, cfg: ProfilesConfig) -> DataFrame:
    """``rows`` (``sourced``) summed per (user_id, tag), D-1's profile moved forward by
    ``seconds`` first (``decayed``'s factors). On ``rows`` partitioned by user_id (a
    bucketed scan, or ``by_user``) this sum and bounded()'s per-user windows need no
    other shuffle."""
    from_previous = F.col(SOURCE) == PREVIOUS
    return (rows.groupBy("user_id", "tag")
            .agg(*[F.sum(F.when(from_previous, F.col(c) * f).otherwise(F.col(c))).alias(c)
                   for c, f in forward_factors(seconds, cfg).items()],
                 F.max("last_event_time").alias("last_event_time")))


def above_min_weight(profile: DataFrame, cfg: ProfilesConfig) -> DataFrame:
    """The rows with a horizon weight or decayed impressions of at least min_weight."""
    return profile.where(F.greatest(*[F.col(c) for c in weight_columns(cfg)], F.col("impressions")) >= cfg.min_weight)


def bounded(profile: DataFrame, cfg: ProfilesConfig) -> DataFrame:
    """Drop tiny rows and keep at most max_tags_per_user tags per user (module docstring)."""
    weights = weight_columns(cfg)
    kept = above_min_weight(profile, cfg)
    by_user_window = Window.partitionBy("user_id")
    shares = [F.coalesce(F.col(c) / F.nullif(F.sum(c).over(by_user_window), F.lit(0.0)), F.lit(0.0)) for c in weights]
    share = shares[0] if len(shares) == 1 else F.greatest(*shares)
    ranked = kept.withColumn("_share", share).withColumn(
        "_rank", F.row_number().over(by_user_window.orderBy(F.desc("_share"), F.desc("impressions"), "tag")))
    return ranked.where(F.col("_rank") <= cfg.max_tags_per_user).select(*profile_columns(cfg))


def incremental(rows: DataFrame, seconds: float, active_users: DataFrame | None, cfg: ProfilesConfig,
                buckets: int = 0, partitioned: bool = False) -> DataFrame:
    """The bounded profile of D from ``rows`` (``sourced``: D-1's profile, not yet decayed,
    and D's contribution), D-1's moved forward by ``seconds``. The rows merged are shuffled
    ``by_user`` into ``buckets`` first, unless ``rows`` is ``partitioned`` so already (a
    bucketed scan).

    With ``active_users`` (the users with events today, small enough to broadcast), the
    rows of everyone else only decay: decay scales all of a user's weights in a horizon by
    the same factor, so their shares, hence their order, do not move, and a bounded profile
    stays within max_tags_per_user. They need the min_weight filter and nothing else: no
    shuffle, no window. Only the active users' rows are merged and bounded. (The broadcast
    joins keep ``rows``'s partitioning.)"""

    def merge(part: DataFrame) -> DataFrame:
        return bounded(merged(part if partitioned else by_user(part, buckets), seconds, cfg), cfg)

    if active_users is None:
        return merge(rows)
    users = F.broadcast(active_users.select("user_id"))
    idle = rows.where(F.col(SOURCE) == PREVIOUS).join(users, "user_id", "left_anti")
    busy = merge(rows.join(users, "user_id", "left_semi"))
    return above_min_weight(decayed(idle, seconds, cfg), cfg).select(*profile_columns(cfg)).unionByName(busy)


def profile_stats(profile: DataFrame) -> dict:
    """Rows, users and distinct tags of a written profile. Users are counted by a grouping
    by user_id (no shuffle on a bucketed read) and tags by a distinct of at most a few
    thousand values, instead of two count-distincts at once (which expand every row twice
    and shuffle them)."""
    per_user = profile.groupBy("user_id").agg(F.count(F.lit(1)).alias("rows"))
    totals = per_user.agg(F.count(F.lit(1)).alias("users"), F.sum("rows").alias("rows")).first()
    return {"rows": totals["rows"] or 0, "users": totals["users"], "tags": profile.select("tag").distinct().count()}


def _history(wh: Warehouse, day: str) -> tuple[DataFrame, DataFrame, list[str]]:
    dates = [d for d in wh.partitions("events") if d <= day]
    if day not in dates:
        wh.read_partition("events", day)  # raises, naming the path and the step to run
    missing = [d for d in dates if not wh.has_partition("articles", d)]
    if missing:
        raise MissingPartitionError(
            f"profiles {day}: events exist but articles do not for {', '.join(missing)} "
            f"(under {wh.location('articles')}): re-run `tagrecall ingest --date <D>` for those dates")
    return wh.read_partitions("events", dates), wh.read_partitions("articles", dates), dates


def profile_bucketing(buckets: int) -> Bucketing | None:
    """How the profile is stored: bucketed by user_id into ``buckets``, or plain for 0."""
    return Bucketing("user_id", buckets) if buckets else None


def _idle_share(wh: Warehouse, prev_day: str, n_active: int | None) -> float | None:
    """The share of D-1's profile users without events on D, at least (some of D's active
    users may be new); None when D-1's run report does not give its user count."""
    if n_active is None:
        return None
    try:
        users = wh.read_run_report(NAME, prev_day).get("users")
    except MissingPartitionError:
        return None
    return round(max(0.0, 1.0 - n_active / users), 4) if users else None


@contextmanager
def built(wh: Warehouse, config: Config, date: dt.date, full: bool = False) -> Iterator[tuple[DataFrame, dict]]:
    """The bounded profile of ``date`` and a description of how it was computed, for the
    ``with`` block (a bucketed merge reads D's contribution from the step's scratch folder
    and both inputs through a table of the session catalog, which last that long)."""
    cfg = config.profiles
    day, prev_day = date.isoformat(), (date - dt.timedelta(days=1)).isoformat()
    start, end = day_bounds(date, config.time.timezone)
    buckets = cfg.buckets if wh.supports_bucketing() else 0
    with contextlib.ExitStack() as stack:
        if not full and wh.has_partition(TABLE, prev_day):
            previous = wh.read_partition(TABLE, prev_day)
            expected = set(profile_columns(cfg))
            if set(previous.columns) != expected:
                raise ValueError(
                    f"profiles {day}: the profile of {prev_day} has columns {sorted(previous.columns)}, "
                    f"this configuration expects {sorted(expected)} (profiles.half_life_days changed?): "
                    f"rebuild with `tagrecall profiles --date {day} --full`")
            events = wh.read_partitions("events", [day])
            if events is None:
                wh.read_partition("events", day)
            articles = wh.read_partition("articles", day).withColumn(PARTITION_COLUMN, F.lit(day))
            prev_end = day_bounds(date - dt.timedelta(days=1), config.time.timezone)[1]
            step_sec = (end - prev_end).total_seconds()  # 23 or 25 hours across a DST change
            active = events.select("user_id").distinct()
            n_active = active.count() if cfg.idle_path_max_users else None
            idle_share = _idle_share(wh, prev_day, n_active)
            use_idle_path = (n_active is not None and n_active <= cfg.idle_path_max_users
                             and (idle_share is None or idle_share >= cfg.idle_path_min_idle_share))
            today = contribution(events, articles, end, cfg, buckets).select(*profile_columns(cfg))
            stored = wh.bucketing(TABLE, prev_day)
            bucketing = profile_bucketing(buckets)
            by_bucket = bucketing is not None and stored == bucketing
            if by_bucket:
                # D's contribution is bucketed alike into the scratch folder; the two are read
                # as one bucketed scan: the merge shuffles nothing more.
                scratch = stack.enter_context(wh.scratch(f"{NAME}-{day}"))
                folder = scratch.write_bucketed(today, "contribution", bucketing)
                rows = stack.enter_context(scratch.bucketed_scan(
                    bucketing, previous.schema, {PREVIOUS: wh.partition_location(TABLE, prev_day), TODAY: folder},
                    SOURCE))
            else:
                if bucketing is not None:
                    log.info("profiles %s: the profile of %s is stored %s; merging it with one shuffle and storing "
                             "%s", day, prev_day, f"in {stored.count} buckets" if stored else "plain", bucketing)
                rows = sourced(previous, today, cfg)
            profile = incremental(rows, step_sec, active if use_idle_path else None, cfg, buckets, by_bucket)
            how = {"mode": "incremental", "previous": prev_day, "event_dates": [day], "active_users": n_active,
                   "idle_share": idle_share, "idle_path": use_idle_path, "previous_bucketed": by_bucket}
        else:
            events, articles, dates = _history(wh, day)
            profile = bounded(contribution(events, articles, end, cfg, buckets), cfg)
            how = {"mode": "full", "event_dates": dates,
                   "why": "--full" if full else f"no profile for {prev_day}"}
        how["buckets"] = buckets
        how["day_start"], how["day_end"] = start.isoformat(), end.isoformat()
        yield profile, how


def run(spark: SparkSession, config: Config, date: dt.date, full: bool = False) -> dict:
    started = time.monotonic()
    wh = Warehouse(spark, config)
    day = date.isoformat()
    with built(wh, config, date, full) as (profile, how):
        log.debug("profiles %s: %s computation over %s", day, how["mode"], ", ".join(how["event_dates"]))
        bucketing = profile_bucketing(how["buckets"])
        wh.write_partition(profile, TABLE, day, bucketing)
    stats = profile_stats(wh.read_bucketed(TABLE, day, bucketing) if bucketing else wh.read_partition(TABLE, day))
    events_read = sum(wh.row_count("events", d) for d in how["event_dates"])
    report = {"step": NAME, "date": day, "status": "succeeded", **how,
              "rows_read": {"events": events_read}, "rows_written": {TABLE: stats["rows"]},
              "users": stats["users"], "tags": stats["tags"],
              "seconds": round(time.monotonic() - started, 3), "config": config.to_dict()}
    wh.write_run_report(NAME, day, report)
    log.debug("profiles %s: %d rows, %d users, %d tags (%s), %.1fs", day, stats["rows"], stats["users"],
             stats["tags"], how["mode"], report["seconds"])
    return report


STEP = Step(NAME, run, summary="decayed user tag profiles of D (D-1's profile + D's events)", options=(
    Option("--full", "recompute from every events partition up to --date instead of yesterday's profile "
                     "+ today's events"),))
main = STEP.main

if __name__ == "__main__":
    raise SystemExit(main())
