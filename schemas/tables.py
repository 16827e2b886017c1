"""Spark schemas of every table in the contract (DESIGN.md, "Interfaces").

Importing this module needs pyspark installed but no running Spark. The partition
column ``dt`` is not part of these schemas: it is the directory a partition lives in.
"""

from __future__ import annotations

from pyspark.sql.types import (
    ArrayType,
    DoubleType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from schemas.catalog import EVENT_TYPES  # noqa: F401  (part of the contract; here for readers of the schemas)

TAG_WEIGHTS = ArrayType(
    StructType([StructField("tag", StringType(), False), StructField("weight", DoubleType(), False)]),
    containsNull=False,
)

EVENTS = StructType(
    [
        StructField("event_id", StringType(), False),
        StructField("user_id", StringType(), False),
        StructField("article_id", StringType(), False),
        StructField("event_type", StringType(), False),
        StructField("event_time", TimestampType(), False),
        StructField("dwell_ms", LongType(), True),
        StructField("position", IntegerType(), True),
        StructField("request_id", StringType(), True),
    ]
)

REJECTED = StructType(
    [
        StructField("source", StringType(), False),
        StructField("raw", StringType(), True),
        StructField("reason", StringType(), False),
        StructField("detail", StringType(), True),
    ]
)

ARTICLES = StructType(
    [
        StructField("article_id", StringType(), False),
        StructField("publish_time", TimestampType(), False),
        StructField("updated_time", TimestampType(), False),
        StructField("tags", TAG_WEIGHTS, False),
    ]
)

USERS = StructType(
    [
        StructField("user_id", StringType(), False),
        StructField("features", MapType(StringType(), StringType(), True), False),
        StructField("updated_time", TimestampType(), False),
    ]
)

def user_tag_profile_schema(horizons: tuple[str, ...] | list[str] = ("long", "short")) -> StructType:
    """One ``<horizon>_weight`` column per configured horizon (profiles.half_life_days);
    the defaults give ``long_weight`` and ``short_weight``. ``impressions`` and ``clicks``
    are decayed counts on profiles.counts_horizon."""
    return StructType(
        [StructField("user_id", StringType(), False), StructField("tag", StringType(), False)]
        + [StructField(f"{h}_weight", DoubleType(), False) for h in horizons]
        + [
            StructField("impressions", DoubleType(), False),
            StructField("clicks", DoubleType(), False),
            StructField("last_event_time", TimestampType(), False),
        ]
    )


USER_TAG_PROFILE = user_tag_profile_schema()

TAG_INDEX = StructType(
    [
        StructField("tag", StringType(), False),
        StructField("rank", IntegerType(), False),
        StructField("article_id", StringType(), False),
        StructField("score", DoubleType(), False),
        StructField("tag_weight", DoubleType(), False),
        StructField("quality", DoubleType(), False),
        StructField("freshness", DoubleType(), False),
    ]
)

TAG_STATS = StructType(
    [
        StructField("tag", StringType(), False),
        StructField("impressions", DoubleType(), False),
        StructField("clicks", DoubleType(), False),
        StructField("ctr", DoubleType(), False),
        StructField("mean_dwell_sec", DoubleType(), True),
        StructField("articles", LongType(), False),
    ]
)

TRAINING_TRIPLES = StructType(
    [
        StructField("event_id", StringType(), False),
        StructField("user_id", StringType(), False),
        StructField("article_id", StringType(), False),
        StructField("tag", StringType(), False),
        StructField("click", IntegerType(), False),
        StructField("dwell_sec", DoubleType(), True),
    ]
)

USER_TOP_TAGS = StructType(
    [
        StructField("user_id", StringType(), False),
        StructField("rank", IntegerType(), False),
        StructField("tag", StringType(), False),
        StructField("p_click", DoubleType(), True),
        StructField("dwell_sec", DoubleType(), True),
        StructField("score", DoubleType(), False),
        StructField("model_version", StringType(), False),
    ]
)

USER_TAG_SCORES = StructType(
    [
        StructField("user_id", StringType(), False),
        StructField("rank", IntegerType(), False),
        StructField("tag", StringType(), False),
        StructField("score", DoubleType(), False),
        # log p(t | u) - log p(t | the average user): how much more this user's tags lean
        # to t than everyone's (models/utpm_train.py); null for a model saved without a prior.
        StructField("interest", DoubleType(), True),
        StructField("model_version", StringType(), False),
    ]
)


def tag_examples_schema(user_features: list[str], fields: list[str]) -> StructType:
    """One row per impression of D: the user's fields as of D-1 (jobs/transforms/user_fields.py),
    the impressed article's tags and the click. ``u_<k>`` per user feature; ``<f>_tags`` and
    ``<f>_weights`` per field (a user_tag_profile column)."""
    return StructType(
        [StructField("event_id", StringType(), False), StructField("user_id", StringType(), False),
         StructField("article_tags", TAG_WEIGHTS, False), StructField("click", IntegerType(), False)]
        + [StructField(f"u_{k}", StringType(), False) for k in user_features]
        + [s for f in fields for s in (StructField(f"{f}_tags", ArrayType(StringType(), False), False),
                                       StructField(f"{f}_weights", ArrayType(DoubleType(), False), False))]
    )


RECALL_EVAL = StructType(
    [
        StructField("method", StringType(), False),
        StructField("metric", StringType(), False),
        StructField("top_n", IntegerType(), False),
        StructField("k", IntegerType(), True),
        StructField("value", DoubleType(), True),
        StructField("numerator", DoubleType(), False),
        StructField("denominator", DoubleType(), False),
    ]
)

SCHEMAS: dict[str, StructType] = {
    "events": EVENTS,
    "rejected": REJECTED,
    "articles": ARTICLES,
    "users": USERS,
    "user_tag_profile": USER_TAG_PROFILE,
    "tag_index": TAG_INDEX,
    "tag_stats": TAG_STATS,
    "training_triples": TRAINING_TRIPLES,
    "user_top_tags": USER_TOP_TAGS,
    # The export's ranking before its guard (jobs/transforms/guard.py); user_top_tags is
    # this, or the baseline served instead.
    "model_top_tags": USER_TOP_TAGS,
    "user_tag_scores": USER_TAG_SCORES,
    "recall_eval": RECALL_EVAL,
}
