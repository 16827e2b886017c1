"""The export guard's decision (jobs/transforms/guard.py), on recall_eval rows written by hand."""

from __future__ import annotations

import datetime as dt

import pytest

from jobs.transforms.guard import MODEL, decide, window

BASELINES = ["mix", "blend", "global"]


def rows(day: str, metric: str = "recall_at_k", **hits: tuple[float, float]) -> list[dict]:
    return [{"dt": day, "method": m, "metric": metric, "numerator": n, "denominator": d}
            for m, (n, d) in hits.items()]


def test_nothing_evaluated_serves_the_model():
    got = decide([], "recall_at_k", 3, BASELINES)
    assert got.serve == MODEL and not got.fell_back and got.days == ()


def test_the_best_baseline_is_served_when_the_model_recalled_less():
    got = decide(rows("2026-09-04", model=(6, 100), mix=(9, 100), blend=(8, 100), **{"global": (7, 100)}),
                 "recall_at_k", 3, BASELINES)
    assert got.serve == "mix" and got.fell_back
    assert got.values == {MODEL: 0.06, "mix": 0.09, "blend": 0.08, "global": 0.07}
    assert "0.0600 < mix's 0.0900" in got.reason and "2026-09-04" in got.reason


def test_values_are_pooled_over_the_window_so_bigger_days_weigh_more():
    # Day 1: model 10/100 vs mix 5/100; day 2: model 10/400 vs mix 30/400.
    # Pooled: model 20/500 = 0.04, mix 35/500 = 0.07 (a mean of the daily ratios would tie at 0.0625 vs 0.0625).
    evaluated = rows("2026-09-01", model=(10, 100), mix=(5, 100)) + rows("2026-09-02", model=(10, 400), mix=(30, 400))
    got = decide(evaluated, "recall_at_k", 3, ["mix"])
    assert got.serve == "mix"
    assert got.values == pytest.approx({MODEL: 0.04, "mix": 0.07})
    assert got.days == ("2026-09-02", "2026-09-01")


def test_only_the_last_window_days_count_and_the_model_returns_when_it_wins_again():
    old_loss = rows("2026-09-01", model=(1, 100), mix=(50, 100))
    wins = rows("2026-09-02", model=(9, 100), mix=(8, 100)) + rows("2026-09-03", model=(9, 100), mix=(8, 100))
    assert decide(old_loss + wins, "recall_at_k", 3, ["mix"]).serve == "mix"  # 19/300 < 66/300
    back = decide(old_loss + wins, "recall_at_k", 2, ["mix"])
    assert back.serve == MODEL and back.days == ("2026-09-03", "2026-09-02")


def test_ties_go_to_the_model_and_between_baselines_to_the_first_listed():
    assert decide(rows("2026-09-01", model=(5, 100), mix=(5, 100)), "recall_at_k", 3, ["mix"]).serve == MODEL
    tied = rows("2026-09-01", model=(1, 100), mix=(5, 100), blend=(5, 100))
    assert decide(tied, "recall_at_k", 3, ["blend", "mix"]).serve == "blend"
    assert decide(tied, "recall_at_k", 3, ["mix", "blend"]).serve == "mix"


def test_the_configured_metric_is_the_one_compared():
    evaluated = (rows("2026-09-01", model=(1, 100), mix=(5, 100))
                 + rows("2026-09-01", metric="click_coverage", model=(60, 100), mix=(50, 100)))
    assert decide(evaluated, "recall_at_k", 3, ["mix"]).serve == "mix"
    assert decide(evaluated, "click_coverage", 3, ["mix"]).serve == MODEL


def test_days_without_the_models_row_are_not_used_and_unlisted_methods_are_ignored():
    # 09-02 was evaluated before export wrote model_top_tags: its export row may be a baseline.
    evaluated = (rows("2026-09-01", model=(3, 100), mix=(2, 100), tag_model=(1, 100), long=(90, 100))
                 + rows("2026-09-02", export=(1, 100), mix=(50, 100)))
    got = decide(evaluated, "recall_at_k", 3, ["mix"])
    assert got.serve == MODEL and got.days == ("2026-09-01",) and set(got.values) == {MODEL, "mix"}
    assert decide(rows("2026-09-02", export=(1, 100), mix=(50, 100)), "recall_at_k", 3, ["mix"]).days == ()


def test_a_baseline_missing_on_a_day_of_the_window_is_not_compared():
    evaluated = rows("2026-09-01", model=(1, 100), mix=(2, 100), blend=(90, 100)) + rows(
        "2026-09-02", model=(1, 100), mix=(2, 100))
    got = decide(evaluated, "recall_at_k", 3, ["blend", "mix"])
    assert got.serve == "mix" and "blend" not in got.values


def test_the_window_is_the_evaluated_days_before_the_date_and_not_too_old():
    days = ["2026-08-20", "2026-09-01", "2026-09-05", "2026-09-06", "2026-09-07"]
    assert window(days, dt.date(2026, 9, 7), 7) == ["2026-09-06", "2026-09-05", "2026-09-01"]
    assert window(days, dt.date(2026, 9, 7), 3) == ["2026-09-06", "2026-09-05"]
