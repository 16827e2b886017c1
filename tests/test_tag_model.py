"""The tag_model step on the synthetic feed: examples without leakage, scores for every user,
the planted interests recovered, and export ranking by the learned scores."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from schemas.config import load_config

FAST = {"epochs": 6, "patience": 2, "batch_size": 256}


@pytest.fixture(scope="module")
def tagged(spark, synthetic_feed, tmp_path_factory):
    """A copy of the synthetic feed with the tag model trained and scored for its last day."""
    from jobs import tag_model

    _, src, dates = synthetic_feed
    base = tmp_path_factory.mktemp("tagged")
    shutil.copytree(src / "warehouse", base / "warehouse")
    config = load_config(overrides={"storage": {"warehouse": str(base / "warehouse"), "raw": str(src / "raw")},
                                    "tag_model": FAST})
    report = tag_model.run(spark, config, dates[-1])
    return config, base, dates, report


def _pd(base, name, day):
    return pd.read_parquet(base / "warehouse" / name / f"dt={day}")


def test_every_user_gets_the_top_tags_of_the_vocabulary_in_order(tagged):
    config, base, dates, report = tagged
    day = dates[-1].isoformat()
    assert report["status"] == "succeeded", report
    scores = _pd(base, "user_tag_scores", day)
    users = set(_pd(base, "users", day).user_id) | set(_pd(base, "user_tag_profile", day).user_id)
    assert set(scores.user_id) == users
    meta = json.loads((base / "warehouse" / "models" / report["model_version"] / "metadata.json").read_text())
    m = min(config.tag_model.top_m, len(meta["tags"]))
    per_user = scores.sort_values(["user_id", "rank"]).groupby("user_id")
    assert (per_user.size() == m).all()
    assert all(list(g["rank"]) == list(range(1, m + 1)) and g.score.is_monotonic_decreasing for _, g in per_user)
    assert not scores.duplicated(["user_id", "tag"]).any() and set(scores.tag) <= set(meta["tags"])
    assert (scores.model_version == report["model_version"]).all()
    assert report["train_days"] == [d.isoformat() for d in dates[1:-1]]
    assert report["users"] == len(users) and report["rows_written"]["user_tag_scores"] == len(scores)


def test_the_written_counts_come_from_the_footers_or_else_from_reading_the_table_back(spark, tagged):
    """The report's counts: users x top_m rows as the Parquet footers say; when the footers
    disagree with the users snapshot, the table read back and its distinct users counted."""
    from jobs import tag_model
    from jobs.common.storage import Warehouse

    config, base, dates, report = tagged
    day = dates[-1].isoformat()
    scores = _pd(base, "user_tag_scores", day)
    truth = {"rows": len(scores), "users": scores.user_id.nunique()}
    per_user = len(scores) // truth["users"]
    wh = Warehouse(spark, config)
    assert tag_model.written_counts(wh, day, truth["users"], per_user) == truth
    assert tag_model.written_counts(wh, day, truth["users"] + 1, per_user) == truth


def test_the_saved_model_reproduces_the_written_scores(tagged):
    """The table's scores are what the saved model (loaded with safe_mode) gives the users'
    fields as of D: one definition for training and scoring."""
    import numpy as np
    import pyarrow as pa

    from models import registry
    from models.utpm_train import inputs

    config, base, dates, report = tagged
    day = dates[-1].isoformat()
    model, meta = registry.load(config.storage.warehouse, report["model_version"])
    scores = _pd(base, "user_tag_scores", day)
    first = scores[scores["rank"] == 1].set_index("user_id")
    # The fields of a few users, rebuilt from D's profile and users by hand.
    prof = _pd(base, "user_tag_profile", day)
    users = _pd(base, "users", day).set_index("user_id")
    some = sorted(prof.user_id.unique())[:20]
    cols = {}
    for k in meta["user_features"]:
        cols[f"u_{k}"] = [(dict(users.features[u]).get(k) or "") if u in users.index else "" for u in some]
    for f in (f for f in meta["fields"] if f != "popular"):
        lists = []
        for u in some:
            mine = prof[(prof.user_id == u) & (prof[f] > 0)].sort_values([f, "tag"], ascending=[False, True])
            lists.append(mine.head(meta["field_length"]))
        cols[f"{f}_tags"] = [list(x.tag) for x in lists]
        cols[f"{f}_weights"] = [list(x[f].astype(float)) for x in lists]
    if "popular" in meta["fields"]:
        stats = _pd(base, "tag_stats", day)
        stats = stats[stats.clicks > 0].assign(share=lambda d: d.clicks / d.clicks.sum())
        stats = stats.sort_values(["share", "tag"], ascending=[False, True]).head(meta["field_length"])
        cols["popular_tags"] = [list(stats.tag)] * len(some)
        cols["popular_weights"] = [list(stats.share)] * len(some)
    batch = pa.table({"user_id": some, **cols})
    got = np.asarray(model.predict_on_batch(inputs(batch, meta["user_features"], meta["fields"],
                                                   meta["field_length"]))["scores"])
    best = [meta["tags"][i] for i in got.argmax(axis=1)]
    assert best == list(first.loc[some].tag)
    np.testing.assert_allclose(got.max(axis=1), first.loc[some].score, rtol=1e-5)


def test_the_driver_and_the_python_workers_score_the_same_table(spark, tagged):
    """Small days are scored in the driver (tag_model.driver_scoring_max_users), big ones by
    Spark's Python workers: both by the same function, so the same rows. Where the scores
    are computed is not part of the model's version."""
    import dataclasses

    from jobs import tag_model
    from jobs.common.storage import Warehouse
    from jobs.transforms.user_fields import user_fields
    from models import utpm_train

    config, base, dates, report = tagged
    day = dates[-1].isoformat()
    wh = Warehouse(spark, config)
    assert wh.row_count("users", day) <= config.tag_model.driver_scoring_max_users  # the step scored in the driver
    fields = user_fields(wh.read_partition("user_tag_profile", day), wh.read_partition("users", day),
                         wh.read_partition("tag_stats", day), config)
    got = {where: tag_model.scores(spark, config, fields, report["model_version"], in_driver=where == "driver")
           .toPandas().sort_values(["user_id", "rank"]).reset_index(drop=True) for where in ("driver", "workers")}
    assert len(got["driver"]) == len(_pd(base, "user_tag_scores", day)) > 0
    pd.testing.assert_frame_equal(got["driver"], got["workers"])
    workers_only = config.replace(tag_model=dataclasses.replace(config.tag_model, driver_scoring_max_users=0))
    window = utpm_train.window(config, dates[-1])
    assert utpm_train.model_version(workers_only, window) == utpm_train.model_version(config, window)
    assert report["model_version"] == utpm_train.model_version(config, window)


def test_examples_of_d_do_not_change_when_the_tables_of_d_are_rewritten(spark, synthetic_feed, tmp_path):
    """Leakage: D's training rows describe users with D-1's tables only."""
    from pyspark.sql import functions as F

    from jobs import triples
    from jobs.common.storage import Warehouse

    _, src, dates = synthetic_feed
    shutil.copytree(src / "warehouse", tmp_path / "warehouse")
    config = load_config(overrides={"storage": {"warehouse": str(tmp_path / "warehouse"), "raw": str(src / "raw")}})
    day = dates[-2].isoformat()
    before = _pd(tmp_path, "tag_examples", day)
    wh = Warehouse(spark, config)
    profile = wh.read_partition("user_tag_profile", day)
    wh.write_partition(profile.withColumn("long_weight", F.col("long_weight") * 0 + 1.0)
                       .withColumn("impressions", F.lit(99.0)), "user_tag_profile", day)
    users = wh.read_partition("users", day)
    wh.write_partition(users.withColumn("features", F.create_map(F.lit("age_band"), F.lit("rewritten"))), "users", day)
    triples.run(spark, config, dates[-2])
    after = _pd(tmp_path, "tag_examples", day)
    key = ["event_id"]
    pd.testing.assert_frame_equal(before.sort_values(key).reset_index(drop=True),
                                  after.sort_values(key).reset_index(drop=True))
    # ... while the next day's examples, which describe users by D's tables, do change.
    triples.run(spark, config, dates[-1])
    changed = _pd(tmp_path, "tag_examples", dates[-1].isoformat())
    assert (changed.impressions_weights.map(lambda w: len(w) > 0 and all(x == 99.0 for x in w))).any()


def test_examples_are_one_row_per_impression_with_the_triples_clicks(synthetic_feed):
    _, base, dates = synthetic_feed
    day = dates[-1].isoformat()
    ex = _pd(base, "tag_examples", day)
    tri = _pd(base, "training_triples", day)
    per_event = tri.groupby("event_id").click.max()
    assert not ex.event_id.duplicated().any()
    assert set(ex.event_id) == set(per_event.index)   # every impression's article has tags here
    assert (ex.set_index("event_id").click == per_event.loc[ex.event_id].values).all()
    assert ex.article_tags.map(len).between(1, 8).all()


def test_export_ranks_by_the_learned_scores(spark, tagged):
    import dataclasses

    from jobs import export

    config, base, dates, _ = tagged
    day = dates[-1].isoformat()
    # The default fuses the learned ranks with mix's: every user still gets top_n distinct tags.
    report = export.run(spark, config, dates[-1])
    assert report["ranked_by"].startswith("reciprocal-rank fusion of user-tag model, mix")
    top = _pd(base, "user_top_tags", day)
    assert (top.groupby("user_id").tag.nunique() == config.export.top_n).all()
    assert set(top.user_id) == set(_pd(base, "user_tag_scores", day).user_id)
    # Without mix, the order is the learned one.
    config = config.replace(export=dataclasses.replace(config.export, mix_weight=0.0))
    report = export.run(spark, config, dates[-1])
    assert report["ranked_by"] == "user-tag model score"
    top = _pd(base, "user_top_tags", day)
    learned = _pd(base, "user_tag_scores", day)
    n = config.export.top_n
    want = learned[learned["rank"] <= n].set_index(["user_id", "rank"]).tag
    got = top.set_index(["user_id", "rank"]).tag
    assert got.loc[want.index].equals(want)


def test_the_learned_profile_recovers_the_planted_interests_at_least_as_well_as_the_decayed_one(spark, tagged):
    from pathlib import Path

    from jobs.tools.profile_eval import planted_recovery

    config, base, dates, _ = tagged
    r = planted_recovery(spark, config, dates[-1], Path(config.storage.raw) / "_truth")
    assert r["users"] > 50
    assert r["precision3_all_learned"] >= r["precision3_all"], r
    assert r["precision3_all_learned"] > r["precision3_all_global"] + 0.1, r
