"""The one definition of the model's features, used by ``triples`` (training) and ``export``
(scoring): no train/serve skew by construction.

``with_features(pairs, tables, config)`` takes (user_id, tag, position, request_index, hour)
rows describing day D and adds every feature, computed only from ``tables``, which the
steps read as of D-1 (``jobs.common.inputs.feature_tables``): nothing of D or later can
leak in. No I/O here: DataFrames in, a DataFrame out.

Features (names in ``schemas.features.feature_spec``):

- categorical: ``tag``; ``u_<key>`` for each key in features.user_features (users as of
  D-1; a missing user or key is the empty string); ``position`` ("none" when unknown) and
  ``hour`` (of the request, in time.timezone) as context.
- numeric: per profile horizon h, ``<h>_weight`` (0 when the tag is not in the profile) and
  ``<h>_rank`` (1 = the user's strongest tag; profiles.max_tags_per_user + 1 when absent);
  ``user_tag_ctr`` = (clicks + k x tag_ctr) / (impressions + k), k = features.user_ctr_prior,
  from the decayed counts; ``user_tag_impressions``; the tag's statistics
  ``tag_impressions``, ``tag_clicks``, ``tag_ctr``, ``tag_mean_dwell`` (the mean over tags
  when unknown), ``tag_articles``; ``match``, the cosine between the user's long-horizon tag
  vector and the mean tag vector of the articles indexed under the tag (0 when either is
  empty); ``request_index`` (0 = the user's first request of the day).
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from schemas.config import Config
from schemas.features import feature_spec


@dataclass(frozen=True)
class FeatureTables:
    """The tables every feature is computed from, all of one day (D-1 for features of D)."""

    profile: DataFrame     # user_tag_profile
    tag_stats: DataFrame
    tag_index: DataFrame
    articles: DataFrame
    users: DataFrame


def centroids(tag_index: DataFrame, articles: DataFrame) -> DataFrame:
    """(tag, co_tag, m, _cn): the mean tag vector of the articles indexed under ``tag``
    (co_tag's mean weight m over them) and its norm _cn. One row per (tag, co_tag): as
    small as the index's tags times their articles' tags, so it is broadcast."""
    art_tags = articles.select("article_id", F.explode("tags").alias("t")).select(
        "article_id", F.col("t.tag").alias("co_tag"), F.col("t.weight").alias("w"))
    per_tag = tag_index.groupBy("tag").agg(F.count(F.lit(1)).alias("_n"))
    centroid = (tag_index.select("tag", "article_id").join(art_tags, "article_id")
                .groupBy("tag", "co_tag").agg(F.sum("w").alias("_s"))
                .join(per_tag, "tag").select("tag", "co_tag", (F.col("_s") / F.col("_n")).alias("m")))
    by_tag = Window.partitionBy("tag")
    return centroid.withColumn("_cn", F.sqrt(F.sum(F.col("m") * F.col("m")).over(by_tag)))


def match_strength(profile: DataFrame, centroid: DataFrame) -> DataFrame:
    """(user_id, tag, match): cosine between the user's long tag vector and ``centroid``'s
    vector of ``tag`` (``centroids``), for the users of ``profile`` and every tag whose
    centroid shares a tag with their profile (the rest have match 0).

    Driven by the profile, not by the pairs: each profile entry (user, co_tag) meets the
    broadcast centroid entries that hold co_tag, so the work grows with profile entries
    rather than with pairs x centroid size, and the sums per (user, tag) and per user run
    on the profile's partitioning by user: no shuffle."""
    user_vec = profile.select("user_id", F.col("tag").alias("co_tag"), F.col("long_weight").alias("u"),
                              F.sqrt(F.sum(F.col("long_weight") ** 2).over(Window.partitionBy("user_id"))).alias("_un"))
    dots = (user_vec.join(F.broadcast(centroid), "co_tag")
            .groupBy("user_id", "tag").agg(F.sum(F.col("u") * F.col("m")).alias("_dot"), F.first("_un").alias("_un"),
                                           F.first("_cn").alias("_cn")))
    return dots.select("user_id", "tag", F.coalesce(F.col("_dot") / F.nullif(F.col("_un") * F.col("_cn"), F.lit(0.0)),
                                                    F.lit(0.0)).alias("match"))


def ranked_profile(profile: DataFrame, horizons: list[str]) -> DataFrame:
    """(user_id, tag, <h>_weight, <h>_rank per horizon, _u_imp, _u_clk): each tag's rank
    among the user's tags by that horizon's weight (null where the weight is 0)."""
    ranked = profile
    for h in horizons:
        order = Window.partitionBy("user_id").orderBy(F.desc(f"{h}_weight"), "tag")
        ranked = ranked.withColumn(f"{h}_rank", F.when(F.col(f"{h}_weight") > 0, F.row_number().over(order)))
    return ranked.select("user_id", "tag", *[f"{h}_weight" for h in horizons], *[f"{h}_rank" for h in horizons],
                         F.col("impressions").alias("_u_imp"), F.col("clicks").alias("_u_clk"))


def with_features(pairs: DataFrame, tables: FeatureTables, config: Config) -> DataFrame:
    """``pairs`` (user_id, tag, position, request_index, hour, ...) + every feature computed
    from ``tables``. Other columns of ``pairs`` pass through."""
    horizons = list(config.profiles.half_life_days)
    absent_rank = config.profiles.max_tags_per_user + 1
    stats = tables.tag_stats
    mean_dwell = stats.agg(F.avg("mean_dwell_sec")).first()[0] or 0.0
    tag_feats = stats.select("tag", F.col("impressions").alias("tag_impressions"),
                             F.col("clicks").alias("tag_clicks"), F.col("ctr").alias("tag_ctr"),
                             F.coalesce("mean_dwell_sec", F.lit(float(mean_dwell))).alias("tag_mean_dwell"),
                             F.col("articles").cast("double").alias("tag_articles"))
    user_cols = [F.coalesce(F.col("features")[k], F.lit("")).alias(f"u_{k}") for k in config.features.user_features]
    user_feats = tables.users.select("user_id", *user_cols)
    k = config.features.user_ctr_prior

    # Everything per user is joined on one partitioning by user_id: the profile is shuffled
    # by user, and its ranks, its match sums and the pairs' joins all run on that
    # partitioning (see CO_PARTITIONED for the setting that lets the (user_id, tag) joins
    # keep it). Spark prunes the columns of the ranks' branch and of match's separately,
    # so each reads its own shuffle of the profile: two, not one per join.
    columns = dict.fromkeys(["user_id", "tag", "long_weight", *[f"{h}_weight" for h in horizons], "impressions",
                             "clicks"])
    profile = (tables.profile.select(*columns)
               .repartition("user_id").join(pairs.select("user_id").distinct(), "user_id", "left_semi"))
    out = (pairs.join(ranked_profile(profile, horizons), ["user_id", "tag"], "left")
           .join(F.broadcast(tag_feats), "tag", "left")
           .join(user_feats.repartition("user_id"), "user_id", "left")
           .join(match_strength(profile, centroids(tables.tag_index, tables.articles)), ["user_id", "tag"], "left"))
    tag_ctr = F.coalesce(F.col("tag_ctr"), F.lit(0.0))
    u_imp, u_clk = F.coalesce(F.col("_u_imp"), F.lit(0.0)), F.coalesce(F.col("_u_clk"), F.lit(0.0))
    filled = {
        **{f"{h}_weight": F.coalesce(F.col(f"{h}_weight"), F.lit(0.0)) for h in horizons},
        **{f"{h}_rank": F.coalesce(F.col(f"{h}_rank"), F.lit(absent_rank)).cast("double") for h in horizons},
        "user_tag_ctr": F.coalesce((u_clk + k * tag_ctr) / F.nullif(u_imp + k, F.lit(0.0)), tag_ctr),
        "user_tag_impressions": u_imp,
        "tag_impressions": F.coalesce(F.col("tag_impressions"), F.lit(0.0)),
        "tag_clicks": F.coalesce(F.col("tag_clicks"), F.lit(0.0)),
        "tag_ctr": tag_ctr,
        "tag_mean_dwell": F.coalesce(F.col("tag_mean_dwell"), F.lit(float(mean_dwell))),
        "tag_articles": F.coalesce(F.col("tag_articles"), F.lit(0.0)),
        "match": F.coalesce(F.col("match"), F.lit(0.0)),
        "request_index": F.col("request_index").cast("double"),
        "position": F.coalesce(F.col("position").cast("string"), F.lit("none")),
        "hour": F.col("hour").cast("string"),
        **{f"u_{k_}": F.coalesce(F.col(f"u_{k_}"), F.lit("")) for k_ in config.features.user_features},
    }
    out = out.withColumns(filled).drop("_u_imp", "_u_clk")
    spec = feature_spec(config)
    passthrough = [c for c in pairs.columns if c not in spec.columns]
    return out.select(*passthrough, *spec.columns)
