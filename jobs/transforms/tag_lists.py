"""Ranked tag lists per user: the profile rankings, the global list, the fill-up that makes
every list equally long, and top-k per key. Used by export (candidates), evaluate (the
methods compared) and profile-eval (diagnostics), so all three rank the same way."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

PROFILE_RANKINGS = ("long", "short", "blend")
# The non-model methods: evaluate compares them, export's guard may serve one.
BASELINES = (*PROFILE_RANKINGS, "mix", "global")


def top_k_per_key(df: DataFrame, key: str | list[str], order: list[Column | str], k: int,
                  rank_col: str = "rank") -> DataFrame:
    """The first ``k`` rows of each ``key`` by ``order``, numbered 1.. in ``rank_col``.
    ``order`` must end in a unique column for the ranks to be the same on every run."""
    window = Window.partitionBy(*([key] if isinstance(key, str) else key)).orderBy(*order)
    return df.withColumn(rank_col, F.row_number().over(window)).where(F.col(rank_col) <= k)


def blend() -> Column:
    """0.5 x the tag's share of the user's long total + 0.5 x its share of the short total."""
    by_user = Window.partitionBy("user_id")
    return sum(0.5 * F.coalesce(F.col(c) / F.nullif(F.sum(c).over(by_user), F.lit(0.0)), F.lit(0.0))
               for c in ("long_weight", "short_weight"))


def ranked_tags(profile: DataFrame, method: str, top_n: int, score_as: str | None = None) -> DataFrame:
    """(user_id, tag, rank) for the user's top ``top_n`` profile tags by ``method`` (long,
    short or blend); with ``score_as``, also the ranking score under that name."""
    if method in ("long", "short"):
        score = F.col(f"{method}_weight")
    elif method == "blend":
        score = blend()
    else:
        raise ValueError(f"unknown profile ranking {method!r}; known: {', '.join(PROFILE_RANKINGS)}")
    ranked = profile.select("user_id", "tag", score.alias("_score")).where(F.col("_score") > 0)
    kept = top_k_per_key(ranked, "user_id", [F.desc("_score"), "tag"], top_n)
    return kept.select("user_id", "tag", "rank", *([F.col("_score").alias(score_as)] if score_as else []))


def mix(profile: DataFrame, tag_stats: DataFrame, users: DataFrame, top_n: int, click_weight: float,
        global_count: int) -> DataFrame:
    """(user_id, tag, rank) for every user of ``users`` (one row per user): the ``mix``
    heuristic. Candidates are the user's profile tags with decayed impressions and the
    ``global_count`` tags with the most decayed clicks; each scores (its share of the user's
    decayed impressions) + ``click_weight`` x (its share of all decayed clicks in
    tag_stats). What the feed chose to show a user, pulled towards what everyone clicks;
    users without impressions get the global order."""
    total = tag_stats.agg(F.sum("clicks")).first()[0] or 0.0
    popular = F.array(*[F.lit(t) for t in global_tags(tag_stats, global_count)]).cast("array<string>")
    share = (tag_stats.select("tag", (F.col("clicks") / F.lit(total) if total else F.lit(0.0)).alias("_g"))
             .where(F.col("_g") > 0))
    # Per user, on one partitioning by user: the shown tags with their impression shares,
    # then the popular tags not among them with share 0 (no cross join of users with them).
    everyone = users.select("user_id")
    shown = (profile.where(F.col("impressions") > 0).join(everyone, "user_id", "left_semi")
             .groupBy("user_id").agg(F.collect_list(F.struct("tag", "impressions")).alias("_shown"),
                                     F.sum("impressions").alias("_imp")))
    mine = F.coalesce(F.col("_shown"), F.array().cast("array<struct<tag:string,impressions:double>>"))
    entries = F.concat(
        F.transform(mine, lambda e: F.struct(e["tag"].alias("tag"), (e["impressions"] / F.col("_imp")).alias("_s"))),
        F.transform(F.array_except(popular, mine["tag"]), lambda t: F.struct(t.alias("tag"), F.lit(0.0).alias("_s"))))
    cands = (everyone.join(shown, "user_id", "left").select("user_id", F.explode(entries).alias("_e"))
             .select("user_id", "_e.tag", "_e._s")
             .join(F.broadcast(share), "tag", "left")
             .select("user_id", "tag", (F.col("_s") + F.lit(click_weight) * F.coalesce("_g", F.lit(0.0))).alias("_m")))
    return top_k_per_key(cands, "user_id", [F.desc("_m"), "tag"], top_n).select("user_id", "tag", "rank")


def baseline(method: str, profile: DataFrame, tag_stats: DataFrame, users: DataFrame, top_tags: list[str],
             top_n: int, mix_click_weight: float, mix_global_tags: int) -> DataFrame:
    """(user_id, tag, rank): ``top_n`` tags for every user of ``users`` (user_id) by a method
    of BASELINES, filled up with ``top_tags`` (global_tags: the top_n most clicked tags,
    whose global_list is itself the ``global`` method)."""
    if method in PROFILE_RANKINGS:
        return filled(ranked_tags(profile, method, top_n), users, top_tags, top_n)
    if method == "mix":
        return filled(mix(profile, tag_stats, users, top_n, mix_click_weight, mix_global_tags), users, top_tags, top_n)
    if method == "global":
        return global_list(users, top_tags)
    raise ValueError(f"unknown baseline {method!r}; known: {', '.join(BASELINES)}")


def filled(personal: DataFrame, users: DataFrame, tags: list[str], top_n: int,
           carry: dict[str, Callable[[Column], Column]] | None = None, keep_others: bool = False) -> DataFrame:
    """(user_id, tag, rank, *carry) for every user of ``users`` (one row per user): the
    user's ``personal`` tags first (their ranks 1.. per user, the first ``top_n`` kept),
    then the global ``tags`` not already among them, in their order, ``top_n`` in all. With
    ``keep_others``, also the personal lists of users not in ``users``, not filled up.
    ``carry`` names the personal rows' columns to keep, each with its value for a fill-up
    row as a function of the tag's position in ``tags`` (1..).

    No cross join of users with the global list: each user's personal rows are gathered
    into one array (one pass over ``personal``), joined with ``users``, and the missing tags
    are the global list minus the user's, sliced to what is missing."""
    carry = carry or {}
    mine = personal.where(F.col("rank") <= top_n).select("user_id", "tag", "rank", *carry)
    if not tags:
        return mine if keep_others else mine.join(users.select("user_id"), "user_id", "left_semi")
    per_user = mine.groupBy("user_id").agg(F.collect_list(F.struct("rank", "tag", *carry)).alias("_mine"))
    entries = per_user.schema["_mine"].dataType
    entry = entries.elementType
    both = per_user.join(users.select("user_id", F.lit(True).alias("_listed")), "user_id",
                         "full" if keep_others else "right")
    glob = F.array(*[F.lit(t) for t in tags])
    owned = F.coalesce(F.col("_mine"), F.array().cast(entries))
    missing = F.when(F.col("_listed"), F.slice(F.array_except(glob, owned["tag"]), 1,
                                                  F.greatest(F.lit(top_n) - F.size(owned), F.lit(0))))
    fill = F.transform(F.coalesce(missing, F.array().cast("array<string>")), lambda t, i: F.struct(
        (F.size(owned) + i + 1).cast(entry["rank"].dataType).alias("rank"), t.alias("tag"),
        *[f(F.array_position(glob, t)).cast(entry[c].dataType).alias(c) for c, f in carry.items()]))
    return (both.select("user_id", F.explode(F.concat(owned, fill)).alias("_e"))
            .select("user_id", "_e.tag", "_e.rank", *[f"_e.{c}" for c in carry]))


def global_list(users: DataFrame, tags: list[str]) -> DataFrame:
    """(user_id, tag, rank): the same ``tags``, ranked in their order, for every user of
    ``users``: the non-personal list and the fill-up for short personal ones."""
    ranked = users.sparkSession.createDataFrame([(t, i + 1) for i, t in enumerate(tags)], "tag string, rank int")
    return users.select("user_id").crossJoin(F.broadcast(ranked))


def global_tags(tag_stats: DataFrame, count: int) -> list[str]:
    """The ``count`` tags with the most decayed clicks in tag_stats (ties by tag): the list
    for users without enough profile tags, and for users unknown to D's snapshot."""
    return [r["tag"] for r in tag_stats.orderBy(F.desc("clicks"), "tag").limit(count).select("tag").collect()]
