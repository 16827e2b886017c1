"""Ingest's volume gate (jobs/transforms/quality.py) on figures written by hand, and on a
half-landed day of the synthetic feed."""

from __future__ import annotations

import json
import shutil

import pytest

from jobs.transforms.quality import figures, violations

PAST = [figures(1000, 100, 900, 100), figures(1200, 110, 1080, 120), figures(800, 90, 720, 80)]  # medians 1000, 100, 100; ctr 1/9


def test_a_day_like_the_others_passes_and_each_figure_out_of_bounds_is_named():
    assert violations(figures(1100, 95, 990, 110), PAST, 3, 3.0, 1.5) == []
    half_landed = violations(figures(300, 30, 270, 30), PAST, 3, 3.0, 1.5)  # 0.30x, 0.30x, 0.30x; ctr 1.00x
    assert [v.split()[0] for v in half_landed] == ["events", "users", "clicks"]
    assert half_landed[0].startswith("events 300 is 0.30x the median 1,000 of the last 3 ingested days")
    doubled_ctr = violations(figures(1000, 100, 900, 200), PAST, 3, 3.0, 1.5)  # ctr 0.2222 / 0.1111 = 2x
    assert [v.split()[0] for v in doubled_ctr] == ["ctr"] and "2.00x" in doubled_ctr[0]


def test_the_bounds_are_inclusive_and_symmetric():
    # events exactly 3x and 1/3x the median of 1000: allowed; a little beyond: not.
    assert violations(figures(3000, 100, 2700, 300), PAST, 3, 3.0, 1.5) == []
    assert violations(figures(3001, 100, 2700, 300), PAST, 3, 3.0, 1.5)[0].startswith("events")
    assert "events" not in " ".join(violations(figures(334, 100, 900, 100), PAST, 3, 3.0, 1.5))
    assert violations(figures(333, 100, 900, 100), PAST, 3, 3.0, 1.5)[0].startswith("events")


def test_nothing_is_checked_before_min_days_and_a_day_without_impressions_has_no_ctr():
    assert violations(figures(1, 1, 1, 1), PAST[:2], 3, 3.0, 1.5) == []
    assert figures(10, 2, 0, 0)["ctr"] is None
    assert [v.split()[0] for v in violations(figures(10, 2, 0, 0), PAST, 3, 3.0, 1.5)] == ["events", "users",
                                                                                          "clicks"]


def test_a_half_landed_day_fails_before_its_events_are_written_and_warn_lets_it_through(
        spark, synthetic_feed, tmp_path):
    from jobs import ingest
    from jobs.common.storage import Warehouse
    from schemas.config import load_config

    _, src, dates = synthetic_feed
    shutil.copytree(src / "warehouse", tmp_path / "warehouse")
    shutil.copytree(src / "raw", tmp_path / "raw")
    day = dates[-1].isoformat()
    for path in (tmp_path / "raw" / "events" / f"dt={day}").iterdir():  # keep a fifth of each landed file
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[: len(lines) // 5]))
    config = load_config(overrides={"storage": {"warehouse": str(tmp_path / "warehouse"),
                                                "raw": str(tmp_path / "raw")}})
    events_dir = tmp_path / "warehouse" / "events" / f"dt={day}"
    before = sorted((p.name, p.stat().st_size) for p in events_dir.iterdir())
    with pytest.raises(ingest.VolumeOutOfBounds, match=rf"ingest {day}: events [\d,]+ is 0\.[12]\dx the median"):
        ingest.run(spark, config, dates[-1])
    assert sorted((p.name, p.stat().st_size) for p in events_dir.iterdir()) == before  # the old day stays
    report = json.loads((tmp_path / "warehouse" / "_runs" / "ingest" / f"{day}.json").read_text())
    assert report["status"] == "failed" and report["quality"]["days_compared"] == len(dates) - 1
    warned = ingest.run(spark, config.replace(quality=config.quality.__class__(action="warn")), dates[-1])
    assert warned["status"] == "succeeded" and warned["quality"]["violations"]
    assert Warehouse(spark, config).read_partition("events", day).count() == warned["quality"]["figures"]["events"]
