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
(they are broadcast to split the profile). A smaller max_tags_per_user reaches an idle
user's rows on their next active day, or at once with ``--full``.

Bounds: a row is dropped when all its horizon weights and its decayed impressions are below
profiles.min_weight. Then each user keeps profiles.max_tags_per_user tags, ranked by their
largest share of one horizon's total (max over h of W_h(u, t) / sum_t' W_h(u, t')), ties by
impressions then tag: a short-term interest that dominates the last days survives next to
long-term ones, although short weights are smaller in absolute terms. Pruning makes the
incremental profile differ from a full recomputation only in rows that were pruned.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs.common.dates import day_bounds
from jobs.common.entry import Option, Step
from jobs.common.storage import MissingPartitionError, Warehouse
from jobs.transforms.decay import age_seconds, decay, decay_factor
from schemas.catalog import PARTITION_COLUMN
from schemas.config import Config, ProfilesConfig
from schemas.tables import user_tag_profile_schema

log = logging.getLogger(__name__)

NAME = "profiles"
TABLE = "user_tag_profile"


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


def contribution(events: DataFrame, articles: DataFrame, end: dt.datetime, cfg: ProfilesConfig) -> DataFrame:
    """The sum of the formula over ``events`` at time ``end``, per (user_id, tag).

    Both inputs carry ``dt``: each event takes its tags from its own day's articles
    snapshot. Events are first reduced to one row per (dt, user, article), then joined to
    the articles' tags: the join sees far fewer rows than there are events."""
    age = age_seconds(F.col("event_time"), end.timestamp())
    sig = signal(cfg)
    is_imp = (F.col("event_type") == "impression").cast("double")
    is_click = (F.col("event_type") == "click").cast("double")
    count_decay = decay(age, cfg.half_life_days[cfg.counts_horizon])
    per_article = (
        events.select(PARTITION_COLUMN, "user_id", "article_id", "event_time",
                      *[(sig * decay(age, h)).alias(f"_{name}") for name, h in cfg.half_life_days.items()],
                      (is_imp * count_decay).alias("_imp"), (is_click * count_decay).alias("_clk"))
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


def decayed(profile: DataFrame, seconds: float, cfg: ProfilesConfig) -> DataFrame:
    """A profile moved forward in time by ``seconds`` (no new events)."""
    counts = decay_factor(seconds, cfg.half_life_days[cfg.counts_horizon])
    return profile.select(
        "user_id", "tag",
        *[(F.col(f"{name}_weight") * decay_factor(seconds, h)).alias(f"{name}_weight")
          for name, h in cfg.half_life_days.items()],
        (F.col("impressions") * counts).alias("impressions"),
        (F.col("clicks") * counts).alias("clicks"),
        "last_event_time")


def merged(previous: DataFrame, today: DataFrame, cfg: ProfilesConfig) -> DataFrame:
    """Rows of both, summed per (user_id, tag). Partitioned by user_id once, so this sum and
    bounded()'s per-user windows share one shuffle instead of two."""
    cols = profile_columns(cfg)
    return (previous.select(*cols).unionByName(today.select(*cols))
            .repartition("user_id")
            .groupBy("user_id", "tag")
            .agg(*[F.sum(c).alias(c) for c in weight_columns(cfg)],
                 F.sum("impressions").alias("impressions"), F.sum("clicks").alias("clicks"),
                 F.max("last_event_time").alias("last_event_time")))


def above_min_weight(profile: DataFrame, cfg: ProfilesConfig) -> DataFrame:
    """The rows with a horizon weight or decayed impressions of at least min_weight."""
    return profile.where(F.greatest(*[F.col(c) for c in weight_columns(cfg)], F.col("impressions")) >= cfg.min_weight)


def bounded(profile: DataFrame, cfg: ProfilesConfig) -> DataFrame:
    """Drop tiny rows and keep at most max_tags_per_user tags per user (module docstring)."""
    weights = weight_columns(cfg)
    kept = above_min_weight(profile, cfg)
    by_user = Window.partitionBy("user_id")
    shares = [F.coalesce(F.col(c) / F.nullif(F.sum(c).over(by_user), F.lit(0.0)), F.lit(0.0)) for c in weights]
    share = shares[0] if len(shares) == 1 else F.greatest(*shares)
    ranked = kept.withColumn("_share", share).withColumn(
        "_rank", F.row_number().over(by_user.orderBy(F.desc("_share"), F.desc("impressions"), "tag")))
    return ranked.where(F.col("_rank") <= cfg.max_tags_per_user).select(*profile_columns(cfg))


def incremental(previous: DataFrame, today: DataFrame, active_users: DataFrame | None,
                cfg: ProfilesConfig) -> DataFrame:
    """The bounded profile from yesterday's (already decayed) and today's contribution.

    With ``active_users`` (the users with events today, small enough to broadcast), the
    rows of everyone else only decay: decay scales all of a user's weights in a horizon by
    the same factor, so their shares, hence their order, do not move, and a bounded profile
    stays within max_tags_per_user. They need the min_weight filter and nothing else: no
    shuffle, no window. Only the active users' rows are merged and bounded."""
    if active_users is None:
        return bounded(merged(previous, today, cfg), cfg)
    users = F.broadcast(active_users.select("user_id"))
    idle = above_min_weight(previous.join(users, "user_id", "left_anti"), cfg)
    busy = bounded(merged(previous.join(users, "user_id", "left_semi"), today, cfg), cfg)
    return idle.select(*profile_columns(cfg)).unionByName(busy)


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


def build(wh: Warehouse, config: Config, date: dt.date, full: bool = False) -> tuple[DataFrame, dict]:
    """The bounded profile of ``date`` and a description of how it was computed."""
    cfg = config.profiles
    day, prev_day = date.isoformat(), (date - dt.timedelta(days=1)).isoformat()
    start, end = day_bounds(date, config.time.timezone)
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
        use_idle_path = n_active is not None and n_active <= cfg.idle_path_max_users
        profile = incremental(decayed(previous, step_sec, cfg), contribution(events, articles, end, cfg),
                              active if use_idle_path else None, cfg)
        how = {"mode": "incremental", "previous": prev_day, "event_dates": [day], "active_users": n_active,
               "idle_path": use_idle_path}
    else:
        events, articles, dates = _history(wh, day)
        profile = bounded(contribution(events, articles, end, cfg), cfg)
        how = {"mode": "full", "event_dates": dates,
               "why": "--full" if full else f"no profile for {prev_day}"}
    how["day_start"], how["day_end"] = start.isoformat(), end.isoformat()
    return profile, how


def run(spark: SparkSession, config: Config, date: dt.date, full: bool = False) -> dict:
    started = time.monotonic()
    wh = Warehouse(spark, config)
    day = date.isoformat()
    profile, how = build(wh, config, date, full)
    log.debug("profiles %s: %s computation over %s", day, how["mode"], ", ".join(how["event_dates"]))
    wh.write_partition(profile, TABLE, day)
    written = wh.read_partition(TABLE, day)
    stats = written.agg(F.count(F.lit(1)).alias("rows"), F.countDistinct("user_id").alias("users"),
                        F.countDistinct("tag").alias("tags")).first()
    events_read = wh.read_partitions("events", how["event_dates"]).count()
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
