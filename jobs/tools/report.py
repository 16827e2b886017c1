"""``tagrecall report --date D``: one self-contained HTML page about day D's run.

It reads the run reports of D (and of the days before, for the trends), the model that
was current after D, the newest recall evaluation up to D, and two small aggregates of D's
profile, and writes ``<warehouse>/_reports/<D>.html`` (or ``--out``) with every plot
embedded as a PNG (matplotlib, Agg backend): no network, no other files.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import logging
import math
from pathlib import Path

from jobs.chain import STEPS
from jobs.common.storage import MissingPartitionError, Warehouse
from jobs.evaluate import METHODS
from schemas.catalog import absolute_uri
from schemas.config import Config, ConfigError

log = logging.getLogger(__name__)

EVAL_METRICS = ("recall_at_k", "click_coverage", "tagged_impressions", "tag_ctr")

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d232a;background:#f4f6f8}
header{background:#1d3557;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85}main{padding:8px 32px 40px;max-width:1180px}
section{background:#fff;border-radius:8px;padding:14px 20px;margin:16px 0;box-shadow:0 1px 3px #0002}
h2{font-size:17px;margin:4px 0 10px;color:#1d3557}table{border-collapse:collapse;margin:6px 0}
td,th{padding:4px 12px;border-bottom:1px solid #e3e7eb;text-align:right}th{background:#eef2f6}
td:first-child,th:first-child{text-align:left}.ok{color:#2a7d2a}.warn{color:#b26b00}.bad{color:#b3261e}
.grid{display:flex;flex-wrap:wrap;gap:16px}.grid>div{flex:1 1 420px}img{max-width:100%}
.note{color:#5a6570;font-size:13px}
"""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _num(x, fmt: str = ",") -> str:
    if x is None:
        return "n/a"
    return format(x, fmt)


class _Reader:
    """Run reports of one warehouse, tolerant of steps that have not run."""

    def __init__(self, wh: Warehouse):
        self.wh = wh

    def report(self, step: str, day: str) -> dict | None:
        try:
            return self.wh.read_run_report(step, day)
        except MissingPartitionError:
            return None

    def days(self, step: str, until: str) -> list[str]:
        names = self.wh.fs.list_names(f"{self.wh.root}/_runs/{step}")
        return sorted(n[:-5] for n in names if n.endswith(".json") and n[:-5] <= until)


def _run_section(reader: _Reader, day: str) -> str:
    rows = []
    for step in (s.name for s in STEPS):
        r = reader.report(step, day)
        if r is None:
            rows.append([step, '<span class="note">not run</span>', "", "", ""])
            continue
        status = r.get("status", "?")
        cls = {"succeeded": "ok", "skipped": "warn"}.get(status, "bad")
        written = ", ".join(f"{k} {v:,}" for k, v in (r.get("rows_written") or {}).items())
        rows.append([step, f'<span class="{cls}">{html.escape(status)}</span>', written,
                     html.escape(str(r.get("reason", r.get("model_version", "")) or "")), _num(r.get("seconds"), ".1f")])
    return "<section><h2>The run of " + day + "</h2>" + _table(
        ["step", "status", "rows written", "note", "seconds"], rows) + "</section>"


def _ingest_section(reader: _Reader, day: str) -> str:
    import matplotlib.pyplot as plt

    r = reader.report("ingest", day)
    if r is None:
        return ""
    rows = []
    reasons: dict[str, int] = {}
    for source, s in r["sources"].items():
        rejected = sum(s["rejected"].values())
        balanced = r.get("balance", {}).get(source, {}).get("balanced")
        rows.append([source, _num(s["landed"]), _num(s["accepted"]), _num(rejected),
                     "yes" if balanced else '<span class="bad">no</span>'])
        for reason, n in s["rejected"].items():
            reasons[f"{source}: {reason}"] = reasons.get(f"{source}: {reason}", 0) + n
    out = "<section><h2>Ingest: rows and rejects</h2><div class='grid'><div>" + _table(
        ["source", "landed", "accepted", "rejected", "landed = accepted + rejected"], rows)
    out += (f"<p class='note'>Every refused record is kept as received, with its reason, in the "
            f"<code>rejected</code> table (dt={day}).</p></div>")
    if reasons:
        items = sorted(reasons.items(), key=lambda kv: kv[1])
        fig, ax = plt.subplots(figsize=(5.6, 0.28 * len(items) + 1))
        ax.barh([k for k, _ in items], [v for _, v in items], color="#c8553d")
        ax.set_xlabel("records refused")
        ax.set_title("rejects by reason")
        out += "<div>" + _png(fig) + "</div>"
    days = reader.days("ingest", day)[-14:]
    if len(days) > 1:
        landed, accepted = [], []
        for d in days:
            ev = reader.report("ingest", d)["sources"]["events"]
            landed.append(ev["landed"])
            accepted.append(ev["accepted"])
        fig, ax = plt.subplots(figsize=(5.6, 2.6))
        ax.plot([d[5:] for d in days], landed, marker="o", label="events landed")
        ax.plot([d[5:] for d in days], accepted, marker="o", label="accepted")
        ax.tick_params(axis="x", rotation=45)
        plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
        ax.legend()
        ax.set_title("events per day")
        out += "<div>" + _png(fig) + "</div>"
    return out + "</div></section>"


def _model_section(reader: _Reader, config: Config, day: str) -> str:
    import matplotlib.pyplot as plt

    from models import registry

    t = reader.report("train", day)
    version = (t or {}).get("version") if (t or {}).get("status") == "succeeded" else None
    version = version or registry.current_version(config.storage.warehouse)
    if version is None:
        return "<section><h2>Model</h2><p>No model has been trained and promoted yet.</p></section>"
    folder = registry.models_dir(config.storage.warehouse) / version
    metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").exists() else {}
    history = json.loads((folder / "history.json").read_text()) if (folder / "history.json").exists() else {}
    v = metrics.get("validation", metrics)
    current = registry.current_version(config.storage.warehouse)
    rows = [[k.replace("_", " "), _num(v.get(k), fmt)] for k, fmt in (
        ("auc", ".4f"), ("gauc", ".4f"), ("log_loss", ".4f"), ("calibration", ".3f"),
        ("dwell_rmse_sec", ".1f"), ("dwell_mae_sec", ".1f"), ("rows", ","), ("clicks", ",")) if k in v]
    gate = ""
    if t and t.get("status") == "succeeded":
        gate = (f"<p>{'Promoted to current' if t['promoted'] else '<b>Not promoted</b>'}: "
                f"{html.escape(str(t['gate']))}. Trained on {', '.join(t['train_days'])} "
                f"({t['train_rows']:,} rows, {t['epochs']} epochs), validated on {day}.</p>")
    elif t:
        gate = f"<p>Training on {day}: {html.escape(t.get('status', ''))} ({html.escape(str(t.get('reason', '')))}).</p>"
    out = (f"<section><h2>Model {html.escape(version)}{' (current)' if version == current else ''}</h2>{gate}"
           "<div class='grid'><div>" + _table(["validation metric", "value"], rows) + "</div>")
    if history:
        epochs = range(1, len(history.get("loss", [])) + 1)
        fig, axes = plt.subplots(1, 2, figsize=(9.5, 3))
        for key, style in (("click_loss", "-"), ("val_click_loss", "--"), ("dwell_loss", "-"), ("val_dwell_loss", "--")):
            if key in history:
                axes[0].plot(epochs, history[key], style, marker="o", label=key.replace("_", " "))
        axes[0].set_xlabel("epoch")
        axes[0].set_title("task losses")
        axes[0].legend(fontsize=8)
        for key in ("weight_click", "weight_dwell"):
            if key in history:
                axes[1].plot(epochs, history[key], marker="o", label=key.replace("weight_", ""))
        axes[1].set_xlabel("epoch")
        axes[1].set_title("learned task weights (exp(-s), 0.5 exp(-s))")
        axes[1].legend(fontsize=8)
        out += "<div>" + _png(fig) + "</div>"
    return out + "</div></section>"


def _eval_section(reader: _Reader, day: str) -> str:
    import matplotlib.pyplot as plt

    days = reader.days("evaluate", day)
    e = reader.report("evaluate", days[-1]) if days else None
    if not e:
        return ("<section><h2>Recall evaluation</h2><p>No evaluation yet: <code>tagrecall evaluate --date D</code> "
                "needs the events of D+1.</p></section>")
    rows = e["rows"]
    by = {(r["method"], r["metric"]): r for r in rows}
    methods = [m for m in METHODS if (m, "recall_at_k") in by]
    heads = []
    for m in EVAL_METRICS:
        r = by[(methods[0], m)]
        heads.append(f"{m.replace('_', ' ')} ({'k=' + str(r['k']) + ', ' if r['k'] else ''}N={r['top_n']})")
    # popular_items (the item channel) has recall@k only: its tag metrics show as n/a.
    table = _table(["method", *heads], [[m, *(_num(by.get((m, k), {}).get("value"), ".4f") for k in EVAL_METRICS)]
                                        for m in methods])
    # Horizontal bars, two metrics a row: the method names sit on the y axis, one per line,
    # so they cannot overlap however many methods there are (vertical bars' rotated x labels did).
    cols = 2
    rows_n = math.ceil(len(EVAL_METRICS) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(11, rows_n * (0.3 * len(methods) + 1.1)), sharey=True,
                             squeeze=False)
    colors = ["#1d3557", "#457b9d", "#a8dadc", "#e9c46a", "#c8553d"]
    order = list(reversed(methods))  # the first method on top
    for ax, metric, head in zip(axes.flat, EVAL_METRICS, heads, strict=False):
        raw = [by.get((m, metric), {}).get("value") for m in order]
        vals = [v or 0 for v in raw]
        bars = ax.barh(order, vals, color=[colors[methods.index(m) % len(colors)] for m in order])
        ax.bar_label(bars, labels=["n/a" if v is None else f"{v:.4f}" for v in raw], padding=3, fontsize=8)
        ax.set_xlim(0, max(vals + [1e-9]) * 1.22)
        ax.set_title(head, fontsize=9)
        ax.tick_params(axis="both", labelsize=8)
    for ax in list(axes.flat)[len(EVAL_METRICS):]:
        ax.set_visible(False)
    fig.tight_layout()
    ctr = by.get(("all", "ctr"), {}).get("value")
    return (f"<section><h2>Recall evaluation: {e['date']}'s outputs against {e['against']}'s behaviour</h2>"
            f"<p>Model {html.escape(str(e.get('model_version')))}. <code>export</code> is the day's "
            "<code>user_top_tags</code> (what was served), <code>model</code> the export's ranking before its guard "
            "(<code>model_top_tags</code>), <code>tag_model</code> the user-tag model alone; the others are "
            "baselines computed in the same run. "
            + (f"Click-through rate of all impressions: {ctr:.4f}." if ctr is not None else "")
            + "</p>" + table + _png(fig) + "</section>")


def _profile_section(reader: _Reader, wh: Warehouse, day: str) -> str:
    import matplotlib.pyplot as plt
    from pyspark.sql import functions as F

    days = reader.days("profiles", day)[-14:]
    p = reader.report("profiles", day)
    if p is None:
        return ""
    out = (f"<section><h2>Profiles and tags on {day}</h2><p>{p['rows_written']['user_tag_profile']:,} "
           f"(user, tag) rows for {p['users']:,} users and {p['tags']:,} tags ({html.escape(p['mode'])}).</p>"
           "<div class='grid'>")
    try:
        profile = wh.read_partition("user_tag_profile", day)
    except MissingPartitionError:
        return out + "</div></section>"
    sizes = [r["n"] for r in profile.where(F.col("long_weight") > 0).groupBy("user_id").agg(
        F.count(F.lit(1)).alias("n")).collect()]
    top = profile.groupBy("tag").agg(F.sum("long_weight").alias("w"), F.countDistinct("user_id").alias("users")) \
        .orderBy(F.desc("w"), "tag").limit(20).collect()
    if len(days) > 1:
        counts = [reader.report("profiles", d)["rows_written"]["user_tag_profile"] for d in days]
        fig, ax = plt.subplots(figsize=(5.4, 2.8))
        ax.plot([d[5:] for d in days], counts, marker="o", color="#1d3557")
        ax.set_title("profile rows per day")
        ax.tick_params(axis="x", rotation=45)
        plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
        out += "<div>" + _png(fig) + "</div>"
    if sizes:
        fig, ax = plt.subplots(figsize=(5.4, 2.8))
        ax.hist(sizes, bins=min(40, max(sizes)), color="#457b9d")
        ax.set_xlabel("tags with a positive long weight")
        ax.set_ylabel("users")
        ax.set_title("profile size per user")
        out += "<div>" + _png(fig) + "</div>"
    if top:
        fig, ax = plt.subplots(figsize=(5.4, 0.25 * len(top) + 1))
        ax.barh([r["tag"] for r in reversed(top)], [r["w"] for r in reversed(top)], color="#e9c46a")
        ax.set_xlabel("sum of long weights")
        ax.set_title("the 20 strongest tags")
        out += "<div>" + _png(fig) + "</div>"
    return out + "</div></section>"


def _export_section(reader: _Reader, day: str) -> str:
    e, pub = reader.report("export", day), reader.report("publish", day)
    if not e:
        return ""
    out = (f"<section><h2>Export and publish</h2><p>{e['users']:,} users get {e['rows_written']['user_top_tags']:,} "
           f"tags, ranked by {html.escape(e['ranked_by'])} (model {html.escape(str(e['model_version']))}).</p>")
    if "guard" in e:
        g = e["guard"]
        served = f"served {html.escape(g['serve'])} instead of the model's ranking" if g["fell_back"] else \
            "served the model's ranking"
        out += f"<p{' class=note' if g['fell_back'] else ''}>The guard {served}: {html.escape(g['reason'])}.</p>"
    if pub and pub.get("status") == "succeeded":
        out += (f"<p>Published to {html.escape(pub['redis'])} as version <code>{html.escape(pub['version'])}</code> "
                f"({pub['written']['users']:,} users, {pub['written']['tags']:,} tags); previous "
                f"<code>{html.escape(str(pub['previous']))}</code> kept for rollback.</p>")
    elif pub:
        out += (f"<p class='note'>Not published: {html.escape(str(pub.get('status')))} "
                f"({html.escape(str(pub.get('reason', '')))}).</p>")
    else:
        out += "<p class='note'>Not published (publish has not run for this day).</p>"
    return out + "</section>"


def render(spark, config: Config, date: dt.date) -> str:
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    wh = Warehouse(spark, config)
    reader = _Reader(wh)
    day = date.isoformat()
    parts = [_run_section(reader, day), _ingest_section(reader, day), _model_section(reader, config, day),
             _eval_section(reader, day), _export_section(reader, day), _profile_section(reader, wh, day)]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>tagrecall {day}</title>"
            f"<style>{CSS}</style></head><body><header><h1>tagrecall: the run of {day}</h1>"
            f"<p>warehouse {html.escape(absolute_uri(config.storage.warehouse))} · written {stamp}</p></header>"
            f"<main>{''.join(parts)}</main></body></html>")


def write(config: Config, date: dt.date, out: str | None = None, spark=None) -> Path:
    if spark is None:
        from jobs.common.session import build_session

        spark = build_session(config, "tagrecall-report", set_master=True)
    root = absolute_uri(config.storage.warehouse)
    if out is None and not root.startswith("file:"):
        raise ConfigError(f"the warehouse {root} is not a local path: give the report a local --out FILE")
    page = render(spark, config, date)
    path = Path(out) if out else Path(root.removeprefix("file://").removeprefix("file:")) / "_reports" \
        / f"{date.isoformat()}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    log.info("report %s: %s (%d kB)", date, path, len(page) // 1024)
    return path
