"""The user side of the user-tag model (models/utpm.py): one definition of a user's fields,
used for the training examples of D (from D-1's tables) and for scoring the users of D
(from D's tables, for D+1). No I/O: DataFrames in, a DataFrame out.

Per user: ``u_<k>`` for each key of features.user_features (as the multi-task model's
features: a missing user or key is the empty string), and for each column c of
tag_model.fields (a column of user_tag_profile: a horizon's weight, the decayed
impressions or the decayed clicks) the user's top tag_model.field_length tags by c with a
positive value, strongest first (ties by tag): ``<c>_tags`` and ``<c>_weights``, empty
when the user has none. With tag_model.popular_field, ``popular_tags`` and
``popular_weights``, the same for every user: the field_length tags with the most decayed
clicks in the day's tag_stats, weighted by their share of all its clicks (what everyone
clicked lately, the context a user's own tags are read against).
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from schemas.config import Config
from schemas.tables import tag_examples_schema


def popular(tag_stats: DataFrame, length: int) -> DataFrame:
    """One row (popular_tags, popular_weights): the ``length`` most clicked tags and their
    share of the clicks."""
    clicked = tag_stats.where(F.col("clicks") > 0)
    total = clicked.agg(F.sum("clicks").alias("_total"))      # one row: no window over the whole table
    top = (clicked.crossJoin(total).select("tag", (F.col("clicks") / F.col("_total")).alias("_w"))
           .orderBy(F.desc("_w"), "tag").limit(length))
    items = F.sort_array(F.collect_list(F.struct((-F.col("_w")).alias("_n"), "tag", "_w")))
    return top.agg(items.alias("_p")).select(F.transform("_p", lambda s: s["tag"]).alias("popular_tags"),
                                             F.transform("_p", lambda s: s["_w"]).alias("popular_weights"))


def user_fields(profile: DataFrame, users: DataFrame, tag_stats: DataFrame, config: Config) -> DataFrame:
    """(user_id, u_<k>..., <c>_tags, <c>_weights...) for every user of ``users`` or
    ``profile``, all of one day, as is ``tag_stats``."""
    cfg = config.tag_model
    long = None
    for c in cfg.fields:
        part = profile.where(F.col(c) > 0).select("user_id", F.lit(c).alias("_field"), "tag",
                                                  F.col(c).cast("double").alias("_w"))
        long = part if long is None else long.unionByName(part)
    order = Window.partitionBy("user_id", "_field").orderBy(F.desc("_w"), "tag")
    ranked = long.withColumn("_r", F.row_number().over(order)).where(F.col("_r") <= cfg.field_length)
    item = F.struct("_r", "tag", "_w")
    per_user = ranked.groupBy("user_id").agg(*[
        F.sort_array(F.collect_list(F.when(F.col("_field") == c, item))).alias(f"_{c}") for c in cfg.fields])
    per_user = per_user.select("user_id", *[x for c in cfg.fields for x in (
        F.transform(f"_{c}", lambda s: s["tag"]).alias(f"{c}_tags"),
        F.transform(f"_{c}", lambda s: s["_w"]).alias(f"{c}_weights"))])
    feats = users.select("user_id", *[F.col("features")[k].alias(f"u_{k}") for k in config.features.user_features])
    everyone = users.select("user_id").unionByName(profile.select("user_id")).distinct()
    out = everyone.join(feats, "user_id", "left").join(per_user, "user_id", "left")
    if cfg.popular_field:
        out = out.crossJoin(F.broadcast(popular(tag_stats, cfg.field_length)))
    return out.select("user_id", *fill_missing(config))


def fill_missing(config: Config) -> list:
    """The columns of user_fields with a user's missing values filled: "" and empty lists."""
    cols = [F.coalesce(F.col(f"u_{k}"), F.lit("")).alias(f"u_{k}") for k in config.features.user_features]
    for c in config.tag_model.input_fields:
        cols += [F.coalesce(F.col(f"{c}_tags"), F.array().cast("array<string>")).alias(f"{c}_tags"),
                 F.coalesce(F.col(f"{c}_weights"), F.array().cast("array<double>")).alias(f"{c}_weights")]
    return cols


def examples(impressions: DataFrame, articles: DataFrame, fields: DataFrame, config: Config) -> DataFrame:
    """Training rows of the tag model: ``impressions`` (event_id, user_id, article_id, click)
    of D, the article's top tag_model.article_tags tags by weight from ``articles``, and the
    user's ``fields`` (user_fields of D-1's tables; a user without them gets empty ones).
    Impressions of articles without tags are left out: they say nothing about tags."""
    n = config.tag_model.article_tags
    tags = articles.select("article_id", F.slice(F.sort_array(F.transform(
        "tags", lambda t: F.struct((-t["weight"]).alias("_neg"), t["tag"].alias("tag"), t["weight"].alias("weight"))
    )), 1, n).alias("_t")).select(
        "article_id", F.transform("_t", lambda t: F.struct(t["tag"].alias("tag"), t["weight"].alias("weight")))
        .alias("article_tags")).where(F.size("article_tags") > 0)
    rows = (impressions.join(tags, "article_id").join(fields, "user_id", "left")
            .select("event_id", "user_id", "article_tags", F.col("click").cast("int").alias("click"),
                    *fill_missing(config)))
    return rows.select(*tag_examples_schema(config.features.user_features, config.tag_model.input_fields).fieldNames())
