"""The evaluate step against the same metrics computed here with pandas, and the report."""

from __future__ import annotations

import base64
import math
import re
import shutil

import pandas as pd
import pytest

from schemas.config import load_config


@pytest.fixture(scope="module")
def evaluated(spark, exported_feed, tmp_path_factory):
    from jobs import evaluate

    _, src, dates = exported_feed
    base = tmp_path_factory.mktemp("evaluated")
    shutil.copytree(src / "warehouse", base / "warehouse")
    # The merge computed by hand below is rank_sum; the others are checked in test_recall_merge.
    config = load_config(overrides={"storage": {"warehouse": str(base / "warehouse")},
                                    "evaluate": {"top_n": 3, "recall_k": 40}, "recall": {"merge": "rank_sum"}})
    report = evaluate.run(spark, config, dates[-2])
    return config, base, dates, report


def _pd(base, name, day):
    return pd.read_parquet(base / "warehouse" / name / f"dt={day}")


def _lists_by_hand(base, config, day, method, users):
    """tags(user, n): the user's first n tags under ``method`` (export, model, long, mix or
    global), filled up with the global list, from D's tables in pandas."""
    stats = _pd(base, "tag_stats", day).sort_values(["clicks", "tag"], ascending=[False, True])
    n_max = max(config.export.top_n, config.evaluate.top_n)
    global_tags = list(stats.tag[:n_max])
    if method in ("export", "model"):
        top = _pd(base, {"export": "user_top_tags", "model": "model_top_tags"}[method], day)
        own = {u: list(g.tag) for u, g in top.sort_values(["user_id", "rank"]).groupby("user_id")}
    elif method == "long":
        prof = _pd(base, "user_tag_profile", day)
        prof = prof[prof.long_weight > 0].sort_values(["user_id", "long_weight", "tag"], ascending=[True, False, True])
        own = {u: list(g.tag[:n_max]) for u, g in prof.groupby("user_id")}
    elif method == "mix":
        prof = _pd(base, "user_tag_profile", day)
        prof = prof[prof.impressions > 0]
        share = prof.impressions / prof.groupby("user_id").impressions.transform("sum")
        shown = {u: dict(zip(g.tag, share[g.index], strict=True)) for u, g in prof.groupby("user_id")}
        click_share = dict(zip(stats.tag, stats.clicks / stats.clicks.sum(), strict=True))
        popular = list(stats.tag[:config.evaluate.mix_global_tags])
        own = {}
        for u in users:
            cands = set(shown.get(u, {})) | set(popular)
            scored = {t: shown.get(u, {}).get(t, 0.0) + config.evaluate.mix_click_weight * click_share.get(t, 0.0)
                      for t in cands}
            own[u] = sorted(scored, key=lambda t: (-scored[t], t))[:n_max]
    else:
        own = {}

    def tags(user, n):
        mine = own.get(user, [])[:n]
        return (mine + [t for t in global_tags if t not in mine])[:n]

    return tags


def _by_hand(base, config, day, nxt, method):
    """The four metrics of ``method`` from the tables, in pandas."""
    events = _pd(base, "events", nxt)
    events = events[events.event_type.isin(["impression", "click"])]
    art = _pd(base, "articles", nxt)
    tags_of = {a: {t["tag"] for t in ts} for a, ts in zip(art.article_id, art.tags, strict=True)}
    tags = _lists_by_hand(base, config, day, method, events.user_id.unique())

    index = _pd(base, "tag_index", day)
    lists = {t: list(zip(g.article_id, g.score, strict=True)) for t, g in index.groupby("tag")}

    def recalled(user):
        total = {}
        for rank, tag in enumerate(tags(user, config.export.top_n), 1):
            for article, score in lists.get(tag, []):
                total[article] = total.get(article, 0.0) + score / math.log2(1 + rank)
        return set(sorted(total, key=lambda a: (-round(total[a], 9), a))[:config.evaluate.recall_k])

    tagged = [bool(tags_of.get(a, set()) & set(tags(u, config.evaluate.top_n)))
              for u, a in zip(events.user_id, events.article_id, strict=True)]
    events = events.assign(tagged=tagged)
    clicks, imps = events[events.event_type == "click"], events[events.event_type == "impression"]
    pairs = clicks[["user_id", "article_id"]].drop_duplicates()
    found = {u: recalled(u) for u in pairs.user_id.unique()}
    hit = [a in found[u] for u, a in zip(pairs.user_id, pairs.article_id, strict=True)]
    hit_pairs = sum(hit)
    channel = _channel_by_hand(base, config, day, nxt)
    popular = [a in channel["popular"] for a in pairs.article_id]
    new = [a in channel["new"] for a in pairs.article_id]
    got = {"recall_at_k": hit_pairs / len(pairs),
           "union_recall_at_k": sum(p or h for p, h in zip(popular, hit, strict=True)) / len(pairs),
           "new_article_recall_at_k": sum(n and h for n, h in zip(new, hit, strict=True)) / sum(new),
           "click_coverage": clicks.tagged.mean(),
           "tagged_impressions": imps.tagged.mean(), "tag_ctr": clicks.tagged.sum() / imps.tagged.sum()}
    # Tag prediction: each user's first K tags against the tags of the articles the user
    # clicked on D+1, over the users with such tags; coverage over the vocabulary.
    relevant = {}
    for u, a in zip(clicks.user_id, clicks.article_id, strict=True):
        relevant.setdefault(u, set()).update(tags_of.get(a, set()))
    relevant = {u: r for u, r in relevant.items() if r}
    for k in (1, 3, 5, 10):
        per_user = []
        for u, rel in relevant.items():
            top = tags(u, k)
            hits = [t in rel for t in top]
            dcg = sum(1 / math.log2(i + 2) for i, h in enumerate(hits) if h)
            idcg = sum(1 / math.log2(i + 2) for i in range(min(k, len(rel))))
            per_user.append((sum(hits) / k, sum(hits) / len(rel), dcg / idcg))
        for j, name in enumerate(("precision", "recall", "ndcg")):
            got[f"tag_{name}_at_{k}"] = sum(p[j] for p in per_user) / len(per_user)
    served = {t for u in events.user_id.unique() for t in tags(u, config.export.top_n)}
    got["tag_coverage"] = len(served) / _pd(base, "tag_stats", day).tag.nunique()
    return got


def _channel_by_hand(base, config, day, nxt):
    """popular_items@k and @2k of D (clicks decayed with evaluate.popular_half_life_days over the
    index's window of D's events), and the new articles among D+1's clicked ones, in pandas."""
    cfg, k = config.index, config.evaluate.recall_k
    end = pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1)
    days = [str((end - pd.Timedelta(days=i + 1)).date()) for i in range(cfg.quality_window_days)]
    history = pd.concat([_pd(base, "events", d) for d in days if (base / "warehouse" / "events" / f"dt={d}").exists()])
    history = history[history.event_type.isin(["impression", "click"])]
    history_time = pd.to_datetime(history.event_time, utc=True)
    clicked = history.event_type == "click"
    age_days = (end - history_time[clicked]).dt.total_seconds() / 86400
    decayed = (2.0 ** (-age_days / config.evaluate.popular_half_life_days)).groupby(history.article_id[clicked]).sum()
    ranked = sorted(decayed[decayed > 0].items(), key=lambda kv: (-kv[1], kv[0]))
    later = _pd(base, "events", nxt)
    later = later[later.event_type.isin(["impression", "click"])]
    first_shown = pd.concat([history_time.groupby(history.article_id).min(),
                             pd.to_datetime(later.event_time, utc=True).groupby(later.article_id).min()]
                            ).groupby(level=0).min()
    art = _pd(base, "articles", nxt)
    published = dict(zip(art.article_id, pd.to_datetime(art.publish_time, utc=True), strict=True))
    recent = pd.Timedelta(days=cfg.new_article_days)
    new = {a for a in later.article_id.unique()
           if (a in published and end - published[a] <= recent) or (a in first_shown and end - first_shown[a] <= recent)}
    return {"popular": {a for a, _ in ranked[:k]}, "popular_2k": {a for a, _ in ranked[:2 * k]}, "new": new}


def test_popular_items_and_the_index_ceiling_equal_a_pandas_computation(evaluated):
    config, base, dates, _ = evaluated
    day, nxt = dates[-2].isoformat(), dates[-1].isoformat()
    channel = _channel_by_hand(base, config, day, nxt)
    events = _pd(base, "events", nxt)
    pairs = events[events.event_type == "click"][["user_id", "article_id"]].drop_duplicates()
    indexed = set(_pd(base, "tag_index", day).article_id)
    new = pairs.article_id.isin(channel["new"])
    assert 0 < new.sum() < len(pairs)   # the feed publishes articles every day: both kinds are clicked
    table = _pd(base, "recall_eval", day)
    got = {(r.method, r.metric): r.value for r in table.itertuples()
           if r.method in ("popular_items", "all") and r.metric != "ctr"}
    assert got == pytest.approx({
        ("all", "index_ceiling"): pairs.article_id.isin(indexed).mean(),
        ("all", "new_article_index_ceiling"): pairs.article_id[new].isin(indexed).mean(),
        ("popular_items", "recall_at_k"): pairs.article_id.isin(channel["popular"]).mean(),
        ("popular_items", "recall_at_2k"): pairs.article_id.isin(channel["popular_2k"]).mean(),
        ("popular_items", "new_article_recall_at_k"): pairs.article_id[new].isin(channel["popular"]).mean(),
    }, rel=1e-12)


@pytest.mark.parametrize("method", ["export", "model", "long", "mix", "global"])
def test_metrics_equal_a_pandas_computation_from_the_tables(evaluated, method):
    config, base, dates, report = evaluated
    day, nxt = dates[-2].isoformat(), dates[-1].isoformat()
    table = _pd(base, "recall_eval", day)
    got = {r.metric: r.value for r in table[table.method == method].itertuples()}
    assert got == pytest.approx(_by_hand(base, config, day, nxt, method), rel=1e-12)
    row = table[(table.method == method) & (table.metric == "recall_at_k")].iloc[0]
    assert (row.top_n, row.k) == (config.export.top_n, config.evaluate.recall_k)


def test_every_method_and_the_reference_ctr_are_written_once(evaluated):
    config, base, dates, report = evaluated
    table = _pd(base, "recall_eval", dates[-2].isoformat())
    assert sorted(table.method.unique()) == ["all", "blend", "export", "global", "long", "mix", "model",
                                             "popular_items", "short"]
    assert not table.duplicated(["method", "metric"]).any()
    assert ((table.numerator <= table.denominator) | (table.metric == "ctr")).all()
    assert report["against"] == dates[-1].isoformat()


def test_a_rerun_writes_the_same_table(spark, evaluated):
    from jobs import evaluate

    config, base, dates, _ = evaluated
    day = dates[-2].isoformat()
    before = _pd(base, "recall_eval", day).sort_values(["method", "metric"]).reset_index(drop=True)
    evaluate.run(spark, config, dates[-2])
    after = _pd(base, "recall_eval", day).sort_values(["method", "metric"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(before, after)


def test_without_the_next_days_events_it_says_so(spark, evaluated):
    from jobs import evaluate
    from jobs.common.storage import MissingPartitionError

    config, _, dates, _ = evaluated
    with pytest.raises(MissingPartitionError, match="needs the events of the next day"):
        evaluate.run(spark, config, dates[-1])


def test_the_report_is_one_self_contained_page(spark, evaluated, tmp_path):
    from jobs import publish
    from jobs.tools import report

    config, base, dates, _ = evaluated
    # The chain's publish without Redis: skipped with its reason, as the page must say.
    publish.STEP.invoke(spark, config, dates[-1], if_ready=True)
    path = report.write(config, dates[-1], str(tmp_path / "r.html"), spark=spark)
    page = path.read_text()
    for heading in ("The run of", "Ingest: rows and rejects", "Recall evaluation", "Profiles and tags"):
        assert heading in page
    assert "Not published: skipped (Redis is not configured" in page
    assert not re.search(r"(src|href)=[\"'](?!data:)", page), "everything must be embedded"
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 5
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)


def test_if_ready_without_the_next_day_is_skipped_from_the_command_line(spark, evaluated, capsys):
    import datetime as dt
    import json
    from pathlib import Path

    from jobs.cli import main

    config, _, dates, _ = evaluated
    last = dates[-1].isoformat()
    code = main(["evaluate", "--date", last, "--if-ready", "--warehouse", config.storage.warehouse,
                 "--raw", config.storage.raw])
    assert code == 0
    assert f"evaluate {last}: skipped (no events of {dates[-1] + dt.timedelta(days=1)})" in capsys.readouterr().out
    report = json.loads((Path(config.storage.warehouse) / "_runs" / "evaluate" / f"{last}.json").read_text())
    assert report["status"] == "skipped" and "events of" in report["reason"]


def test_export_serves_the_best_baseline_while_the_model_recalled_less_and_the_model_once_it_wins(
        spark, exported_feed, tmp_path):
    from jobs import export
    from tests.conftest import put_partition

    _, src, dates = exported_feed
    shutil.copytree(src / "warehouse", tmp_path / "warehouse")
    config = load_config(overrides={"storage": {"warehouse": str(tmp_path / "warehouse"), "raw": str(src / "raw")}})
    day, before = dates[-1].isoformat(), dates[-2].isoformat()
    served_first = _pd(tmp_path, "user_top_tags", day).sort_values(["user_id", "rank"]).reset_index(drop=True)

    def evaluated(model_hits: int) -> None:  # recall@k of the day before: blend 40/400, mix 50/400, global 30/400
        hits = {"model": model_hits, "export": model_hits, "blend": 40, "mix": 50, "global": 30}
        put_partition(spark, config, "recall_eval", before, [
            {"method": m, "metric": "recall_at_k", "top_n": 20, "k": 100, "value": h / 400, "numerator": float(h),
             "denominator": 400.0} for m, h in hits.items()])

    evaluated(model_hits=20)
    report = export.run(spark, config, dates[-1])
    assert report["guard"]["serve"] == "mix" and report["guard"]["days"] == [before]
    assert report["model_version"].startswith("guard: mix served") and report["ranked_by"].startswith("mix")
    model = _pd(tmp_path, "model_top_tags", day).sort_values(["user_id", "rank"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(model, served_first)  # the model's ranking is still written, unchanged
    served = _pd(tmp_path, "user_top_tags", day)
    assert set(served.user_id) == set(model.user_id)
    assert set(served.model_version) == {report["model_version"]}
    mix_of = _lists_by_hand(tmp_path, config, day, "mix", served.user_id.unique())
    got = {u: list(g.sort_values("rank").tag) for u, g in served.groupby("user_id")}
    assert got == {u: mix_of(u, config.export.top_n) for u in got}

    evaluated(model_hits=50)  # a tie with mix goes to the model
    report = export.run(spark, config, dates[-1])
    assert report["guard"]["serve"] == "model" and report["model_version"] == served_first.model_version[0]
    again = _pd(tmp_path, "user_top_tags", day).sort_values(["user_id", "rank"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(again, served_first)
