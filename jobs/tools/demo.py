"""``tagrecall demo``: a week of synthetic feed through the daily chain, with a summary a
person can read: what was landed and refused, the profiles and index, how well the
profiles name the next day's clicks, the model, the export, the evaluation and the report.

The data steps run every day; the model is trained (and the tags exported) on the last two
days only, to save time: the day before last gets evaluated against the last day, and the
last day's model passes the gate against the first one's.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from jobs.chain import DATA_STEPS, STEPS, run_chain
from jobs.common.dates import date_range
from jobs.common.session import build_session
from jobs.evaluate import format_eval
from jobs.tools import profile_eval, report
from jobs.tools.synthetic import FeedParams, generate
from schemas.catalog import absolute_uri
from schemas.config import Config

log = logging.getLogger("tagrecall")


@dataclass(frozen=True)
class DemoPlan:
    base: Path
    start: dt.date
    days: int
    feed: FeedParams

    @property
    def dates(self) -> list[dt.date]:
        return list(date_range(self.start, self.start + dt.timedelta(days=self.days - 1)))


def summarise_ingest(reports: list[dict], config: Config) -> str:
    lines = [f"{'date':<12}{'events landed':>15}{'accepted':>12}{'rejected':>10}  top reasons"]
    for r in reports:
        if r["step"] != "ingest":
            continue
        ev = r["report"]["sources"]["events"]
        refused = sum(ev["rejected"].values())
        top = ", ".join(f"{k} {v}" for k, v in sorted(ev["rejected"].items(), key=lambda kv: -kv[1])[:3])
        lines.append(f"{r['date']:<12}{ev['landed']:>15,}{ev['accepted']:>12,}{refused:>10,}  {top}")
    root = absolute_uri(config.storage.warehouse)
    lines.append(f"tables: {root}/<table>/dt=YYYY-MM-DD/  ({config.storage.format})")
    lines.append(f"run reports: {root}/_runs/<step>/<date>.json")
    return "\n".join(lines)


def summarise_profiles_and_index(reports: list[dict]) -> str:
    index = {r["date"]: r["report"] for r in reports if r["step"] == "index"}
    lines = [f"\n{'date':<12}{'profile rows':>14}{'users':>9}{'tags':>6}  {'mode':<12}"
             f"{'index rows':>11}{'articles':>10}{'prior ctr':>11}"]
    for r in reports:
        if r["step"] != "profiles":
            continue
        p, i = r["report"], index.get(r["date"], {})
        ctr = i.get("prior", {}).get("ctr")
        lines.append(f"{r['date']:<12}{p['rows_written']['user_tag_profile']:>14,}{p['users']:>9,}{p['tags']:>6,}  "
                     f"{p['mode']:<12}{i.get('rows_written', {}).get('tag_index', 0):>11,}"
                     f"{i.get('articles_eligible', 0):>10,}{'' if ctr is None else f'{ctr:.4f}':>11}")
    return "\n".join(lines)


def summarise_training(reports: list[dict]) -> str:
    lines = []
    for r in reports:
        if r["step"] != "train":
            continue
        t = r["report"]
        if t["status"] != "succeeded":
            lines.append(f"\ntrain {r['date']}: {t['status']} ({t.get('reason')})")
            continue
        v = t["validation"]

        def f(x, fmt=".4f"):
            return "n/a" if x is None else format(x, fmt)

        lines.append(f"\nmodel {t['version']} ({t['epochs']} epochs on {t['train_rows']:,} rows from "
                     f"{', '.join(t['train_days'])}), validated on {r['date']}:")
        lines.append(f"  CTR AUC {f(v.get('auc'))}  GAUC {f(v.get('gauc'))}  log loss {f(v.get('log_loss'))}  "
                     f"calibration {f(v.get('calibration'), '.3f')}  dwell RMSE {f(v.get('dwell_rmse_sec'), '.1f')} s  "
                     f"MAE {f(v.get('dwell_mae_sec'), '.1f')} s")
        weights = ", ".join(f"{k} {w:.3f}" for k, w in t["task_weights"].items())
        lines.append(f"  learned task weights: {weights}; "
                     f"{'promoted to current' if t['promoted'] else 'not promoted'} ({t['gate']})")
        lines.append(f"  {t['model_dir']}: model.keras, metrics.json, history.json, history.png")
    for r in reports:
        t = r["report"]
        if r["step"] != "tag_model":
            continue
        if t["status"] != "succeeded":
            lines.append(f"\ntag model {r['date']}: {t['status']} ({t.get('reason')})")
            continue
        val = t.get("validation_loss")
        lines.append(f"\ntag model {t['model_version']} ({t['loss']} loss, {t['epochs']} epochs on "
                     f"{t['train_rows']:,} impressions from {', '.join(t['train_days'])}; validation loss "
                     f"{'n/a' if val is None else f'{val:.4f}'}): {t['tags']:,} tags, top "
                     f"{t['rows_written']['user_tag_scores'] // max(t['users'], 1)} scored for {t['users']:,} users")
    for r in reports:
        if r["step"] == "export":
            e = r["report"]
            lines.append(f"\nexport {r['date']}: top tags for {e['users']:,} users ({e['rows_written']['user_top_tags']:,} "
                         f"rows), ranked by {e['ranked_by']}, model {e['model_version']}")
            if "guard" in e:
                lines.append(f"  guard: {'fell back to ' + e['guard']['serve'] if e['guard']['fell_back'] else 'the model'}"
                             f" ({e['guard']['reason']})")
    return "\n".join(lines)


def summarise_publish_and_evaluate(reports: list[dict]) -> str:
    lines = []
    published = [r for r in reports if r["step"] == "publish"]
    if published and published[-1]["report"]["status"] == "succeeded":
        rep = published[-1]["report"]
        lines.append(f"\npublish {rep['date']}: version {rep['version']} is current in {rep['redis']} "
                     f"({rep['written']['users']:,} users, {rep['written']['tags']:,} tags); "
                     f"try `tagrecall recall --user <id>`")
    elif published:
        lines.append(f"\npublish: skipped ({published[-1]['report']['reason']})")
    for r in reports:
        rep = r["report"]
        if r["step"] == "evaluate" and rep["status"] == "succeeded":
            lines.append(f"\nrecall of {rep['date']} against the behaviour of {rep['against']} "
                         f"(model {rep['model_version']}):")
            lines.append(format_eval(rep["rows"]))
    return "\n".join(lines)


def run(config: Config, plan: DemoPlan) -> int:
    """Generate the feed into ``config.storage.raw``, run the chain, print the summary.
    The demo's own folders (``<base>/raw``, ``<base>/warehouse``) are emptied first."""
    for path in (plan.base / "raw", plan.base / "warehouse"):
        if path.exists():
            shutil.rmtree(path)
    log.info("generating %d days of synthetic feed into %s", plan.days, config.storage.raw)
    generate(config.storage.raw, plan.start, plan.days, plan.feed, config.time.timezone)
    dates = plan.dates
    spark = build_session(config, "tagrecall-demo", set_master=True)
    daily = [s for s in STEPS if s.name in DATA_STEPS]
    reports = run_chain(spark, config, dates[:-2], daily) + run_chain(spark, config, dates[-2:], list(STEPS))
    print(summarise_ingest(reports, config))
    print(summarise_profiles_and_index(reports))
    if len(dates) >= 2:
        print(f"\nhow well the profile of {dates[-2]} names the tags clicked on {dates[-1]}:")
        print(profile_eval.format_hit_rates(profile_eval.next_day_hit_rates(spark, config, dates[-2], [1, 3, 5])))
    truth = Path(config.storage.raw) / "_truth"
    print(profile_eval.format_recovery(profile_eval.planted_recovery(spark, config, dates[-1], truth)))
    print(summarise_training(reports))
    print(summarise_publish_and_evaluate(reports))
    path = report.write(config, dates[-1], spark=spark)
    print(f"\nreport: {path}")
    return 0
