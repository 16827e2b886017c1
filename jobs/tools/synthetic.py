"""Synthetic feed, ``tagrecall generate``: a realistic landing zone with a known truth.

What is planted (and written under ``<raw>/_truth/`` so tests can check that later steps
recover it):

- tags with Zipf popularity; articles with 1-5 weighted tags, a latent quality, publish
  times, new articles every day and occasional re-issued versions of old ones;
- users with categorical features, an activity level, 3-6 long-term interest tags and 2
  short-term ones that drift (each day a user's short interests change with some chance);
- requests of 10 impressions at positions 0-9, half of them drawn from the user's
  interests (as a recommender would), half from fresh popular articles;
- clicks driven by user-tag affinity, article quality and position bias; lognormal dwell
  on clicks; rarer likes, comments, favorites and shares;
- late data: a share of each day's events lands the next day;
- with ``bad_rate``: every kind of bad record ingest must refuse, counted per reason.

Deterministic by seed; memory is bounded by generating and writing users in blocks.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from jobs.common.dates import day_bounds, epoch_ms

log = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000
SLOTS_LONG, SLOTS_SHORT = 6, 2
MAX_TAGS = 5
IMPRESSIONS_PER_REQUEST = 10
FEATURES = {
    "age": ["<18", "18-24", "25-34", "35-44", "45-54", "55+"],
    "gender": ["f", "m", "u"],
    "city_tier": ["1", "2", "3", "4"],
    "device": ["android", "ios", "web"],
}
# Bad records injected with --bad-rate, named by the reason ingest gives them.
BAD_EVENT_KINDS = (
    "malformed_record", "missing_field", "bad_type", "unknown_event_type", "negative_dwell",
    "absurd_dwell", "bad_position", "too_late", "in_future", "unknown_user", "unknown_article",
    "duplicate_event_id",
)
BAD_ARTICLE_KINDS = ("malformed_record", "missing_field", "bad_type", "bad_tags")
BAD_USER_KINDS = ("malformed_record", "missing_field", "bad_type")


@dataclass(frozen=True)
class FeedParams:
    users: int = 2000
    articles: int = 3000
    tags: int = 200
    seed: int = 7
    bad_rate: float = 0.0
    requests_per_active_user: float = 3.0
    new_articles_per_day: float = 0.05   # as a share of the initial catalogue
    new_users_per_day: float = 0.01
    article_updates_per_day: float = 0.01
    short_interest_drift: float = 0.3    # chance a user's short interests change on a day
    late_rate: float = 0.01              # share of a day's events landing the next day
    block_users: int = 50_000

    def validate(self) -> FeedParams:
        for name in ("users", "articles", "tags", "block_users"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be > 0, got {getattr(self, name)}")
        if self.tags < SLOTS_LONG + SLOTS_SHORT:
            raise ValueError(f"--tags must be at least {SLOTS_LONG + SLOTS_SHORT}")
        if not 0 <= self.bad_rate < 0.5:
            raise ValueError(f"--bad-rate must be in [0, 0.5), got {self.bad_rate}")
        return self


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class _Catalogue:
    """Articles as arrays: tags (padded with -1), weights, quality, publish time."""

    def __init__(self):
        self.tags = np.zeros((0, MAX_TAGS), dtype=np.int32)
        self.weights = np.zeros((0, MAX_TAGS))
        self.quality = np.zeros(0)
        self.publish_ms = np.zeros(0, dtype=np.int64)
        self.updated_ms = np.zeros(0, dtype=np.int64)

    def __len__(self):
        return len(self.quality)

    def add(self, tags, weights, quality, publish_ms):
        self.tags = np.vstack([self.tags, tags])
        self.weights = np.vstack([self.weights, weights])
        self.quality = np.concatenate([self.quality, quality])
        self.publish_ms = np.concatenate([self.publish_ms, publish_ms])
        self.updated_ms = np.concatenate([self.updated_ms, publish_ms])


def _draw_tags(rng, n, popularity):
    counts = rng.choice(np.arange(1, MAX_TAGS + 1), size=n, p=[0.2, 0.35, 0.25, 0.12, 0.08])
    tags = np.full((n, MAX_TAGS), -1, dtype=np.int32)
    weights = np.zeros((n, MAX_TAGS))
    for i, k in enumerate(counts):
        chosen = rng.choice(len(popularity), size=k, replace=False, p=popularity)
        w = np.sort(rng.dirichlet(np.full(k, 2.0)))[::-1]
        w = np.maximum(np.round(w, 4), 0.0001)
        tags[i, :k], weights[i, :k] = chosen, w / w.sum()
    return tags, weights


def _article_id(i):
    return f"a{i:07d}"


def _user_id(i):
    return f"u{i:07d}"


def _tag_name(t):
    return f"t{t:03d}"


class FeedGenerator:
    def __init__(self, raw: str | Path, start: dt.date, days: int, params: FeedParams,
                 timezone: str = "UTC"):
        self.raw = Path(raw)
        self.start, self.days, self.p, self.tz = start, days, params.validate(), timezone
        if days <= 0:
            raise ValueError(f"--days must be > 0, got {days}")
        self.rng = np.random.default_rng(params.seed)
        ranks = np.arange(1, params.tags + 1)
        pop = 1.0 / ranks ** 0.8
        self.popularity = pop / pop.sum()
        self.catalogue = _Catalogue()
        self.n_users = 0
        self.user_features: dict[str, np.ndarray] = {k: np.zeros(0, dtype=np.int8) for k in FEATURES}
        self.activity = np.zeros(0)
        self.long_tags = np.zeros((0, SLOTS_LONG), dtype=np.int32)
        self.long_w = np.zeros((0, SLOTS_LONG))
        self.short_tags = np.zeros((0, SLOTS_SHORT), dtype=np.int32)
        self.short_w = np.zeros((0, SLOTS_SHORT))
        self.joined_ms = np.zeros(0, dtype=np.int64)
        self.event_seq = 0
        self.request_seq = 0

    # -- helpers ----------------------------------------------------------------------------
    def _dir(self, source: str, day: dt.date) -> Path:
        path = self.raw / source / f"dt={day.isoformat()}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _truth(self, *parts: str) -> Path:
        path = self.raw.joinpath("_truth", *parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _add_users(self, n: int, joined_ms: np.ndarray):
        rng = self.rng
        for name, values in FEATURES.items():
            self.user_features[name] = np.concatenate(
                [self.user_features[name], rng.integers(0, len(values), n).astype(np.int8)])
        self.activity = np.concatenate([self.activity, np.clip(rng.lognormal(-1.2, 0.6, n), 0.05, 0.95)])
        lt = np.zeros((n, SLOTS_LONG), dtype=np.int32)
        lw = np.zeros((n, SLOTS_LONG))
        for i in range(n):
            k = rng.integers(3, SLOTS_LONG + 1)
            lt[i, :k] = rng.choice(self.p.tags, size=k, replace=False, p=self.popularity)
            lt[i, k:] = -1
            lw[i, :k] = np.sort(rng.dirichlet(np.full(k, 1.5)))[::-1]
        self.long_tags = np.vstack([self.long_tags, lt])
        self.long_w = np.vstack([self.long_w, lw])
        self.short_tags = np.vstack([self.short_tags, self._draw_short(n)])
        self.short_w = np.vstack([self.short_w, np.tile([0.6, 0.4], (n, 1))])
        self.joined_ms = np.concatenate([self.joined_ms, joined_ms])
        first = self.n_users
        self.n_users += n
        return np.arange(first, self.n_users)

    def _draw_short(self, n):
        return self.rng.integers(0, self.p.tags, size=(n, SLOTS_SHORT)).astype(np.int32)

    def _add_articles(self, n: int, publish_ms: np.ndarray):
        tags, weights = _draw_tags(self.rng, n, self.popularity)
        first = len(self.catalogue)
        self.catalogue.add(tags, weights, self.rng.normal(0.0, 0.5, n), publish_ms)
        return np.arange(first, len(self.catalogue))

    def _article_records(self, idx: np.ndarray) -> list[dict]:
        c = self.catalogue
        out = []
        for i in idx:
            k = int((c.tags[i] >= 0).sum())
            out.append({"article_id": _article_id(i), "publish_time": int(c.publish_ms[i]),
                        "updated_time": int(c.updated_ms[i]),
                        "tags": [{"tag": _tag_name(c.tags[i, j]), "weight": round(float(c.weights[i, j]), 4)}
                                 for j in range(k)]})
        return out

    def _user_records(self, idx: np.ndarray) -> list[dict]:
        return [{"user_id": _user_id(i), "updated_time": int(self.joined_ms[i]),
                 "features": {k: FEATURES[k][self.user_features[k][i]] for k in FEATURES}}
                for i in idx]

    # -- bad records -----------------------------------------------------------------------
    def _corrupt(self, record: dict, kind: str, bounds_ms: tuple[int, int]) -> str:
        r = dict(record)
        if kind == "malformed_record":
            return json.dumps(r)[: -7]
        if kind == "missing_field":
            key = "user_id" if "event_id" in r else ("article_id" if "article_id" in r else "user_id")
            r[key] = None
        elif kind == "bad_type":
            r["event_time" if "event_time" in r else "updated_time"] = "yesterday"
        elif kind == "unknown_event_type":
            r["event_type"] = "swipe"
        elif kind == "negative_dwell":
            r["dwell_ms"] = -1500
        elif kind == "absurd_dwell":
            r["dwell_ms"] = 30 * 24 * 3600 * 1000
        elif kind == "bad_position":
            r["position"] = -3
        elif kind == "too_late":
            r["event_time"] = bounds_ms[0] - 3 * DAY_MS
        elif kind == "in_future":
            r["event_time"] = bounds_ms[1] + 2 * DAY_MS
        elif kind == "unknown_user":
            r["user_id"] = "u_unknown_" + r["event_id"]
        elif kind == "unknown_article":
            r["article_id"] = "a_unknown_" + r["event_id"]
        elif kind == "bad_tags":
            r["tags"] = [{"tag": "t000", "weight": 1.5}]
        else:
            raise ValueError(kind)
        return json.dumps(r)

    def _bad_lines(self, lines: list[str], kinds: tuple[str, ...], bounds_ms, fresh_id) -> tuple[list[str], dict]:
        """About ``bad_rate`` x len(lines) extra bad records: copies of random good lines,
        each broken one way. A broken copy gets a fresh id (``fresh_id``) so the good
        original is untouched; a duplicate is an exact copy."""
        n = int(self.rng.binomial(len(lines), self.p.bad_rate)) if lines else 0
        counts = dict.fromkeys(kinds, 0)
        out = []
        for j, i in enumerate(self.rng.integers(0, len(lines), n)):
            kind = kinds[j % len(kinds)]
            counts[kind] += 1
            if kind == "duplicate_event_id":
                out.append(lines[i])
            else:
                out.append(self._corrupt(fresh_id(json.loads(lines[i]), j), kind, bounds_ms))
        return out, counts

    # -- one day ----------------------------------------------------------------------------
    def _day_events(self, day: dt.date, live_until: int, day_start: int):
        """Yield DataFrames of day's events, one per block of users."""
        rng, p, c = self.rng, self.p, self.catalogue
        day_end = day_start + DAY_MS
        published = c.publish_ms < day_end
        old = np.flatnonzero(c.publish_ms < day_start)
        # Fresh popular articles: chance proportional to freshness (half-life 3 days).
        age_days = np.maximum(day_end - c.publish_ms, 0) / DAY_MS
        fresh_w = np.where(published, 0.5 ** (age_days / 3.0) * np.exp(c.quality), 0.0)
        fresh_p = fresh_w / fresh_w.sum()
        # tag -> live articles, for interest-driven candidates.
        flat_tags = c.tags[published].ravel()
        flat_articles = np.repeat(np.flatnonzero(published), MAX_TAGS)
        keep = flat_tags >= 0
        order = np.argsort(flat_tags[keep], kind="stable")
        by_tag = flat_articles[keep][order]
        counts = np.bincount(flat_tags[keep], minlength=p.tags)
        ptr = np.concatenate([[0], np.cumsum(counts)])

        active_users = np.flatnonzero(self.joined_ms < day_end)
        for b in range(0, len(active_users), p.block_users):
            users = active_users[b: b + p.block_users]
            users = users[rng.random(len(users)) < self.activity[users]]
            n_req = rng.poisson(p.requests_per_active_user, len(users))
            req_user = np.repeat(users, n_req)
            n_r = len(req_user)
            if n_r == 0:
                continue
            req_time = day_start + rng.integers(0, DAY_MS - 60_000, n_r)
            req_time = np.maximum(req_time, self.joined_ms[req_user] + 1000)
            u = np.repeat(req_user, IMPRESSIONS_PER_REQUEST)
            pos = np.tile(np.arange(IMPRESSIONS_PER_REQUEST), n_r)
            t_imp = np.repeat(req_time, IMPRESSIONS_PER_REQUEST) + pos * 1500
            req_idx = np.repeat(np.arange(self.request_seq, self.request_seq + n_r), IMPRESSIONS_PER_REQUEST)
            self.request_seq += n_r
            n = len(u)
            # Candidates: from interests (tag by interest weight, then an article of it) or fresh.
            slots_t = np.hstack([self.long_tags[u], self.short_tags[u]])
            slots_w = np.hstack([self.long_w[u], self.short_w[u]])
            slots_w = np.where(slots_t >= 0, slots_w, 0.0)
            cum = np.cumsum(slots_w, axis=1)
            pick = (cum < rng.random(n)[:, None] * cum[:, -1:]).sum(axis=1)
            tag = slots_t[np.arange(n), np.minimum(pick, slots_t.shape[1] - 1)]
            have = counts[tag] > 0
            art = rng.choice(len(c), size=n, p=fresh_p)
            from_interest = (rng.random(n) < 0.5) & have
            offs = (rng.random(n) * counts[tag]).astype(np.int64)
            art = np.where(from_interest, by_tag[np.minimum(ptr[tag] + offs, len(by_tag) - 1)], art)
            # An article published after the impression cannot be shown: show an older one.
            too_new = c.publish_ms[art] >= t_imp
            if too_new.any():
                art[too_new] = old[rng.integers(0, len(old), too_new.sum())]
            # Affinity: sum over the article's tags of its weight x the user's interest weight.
            a_tags, a_w = c.tags[art], c.weights[art]
            match = (a_tags[:, :, None] == slots_t[:, None, :]) & (a_tags[:, :, None] >= 0)
            affinity = (match * a_w[:, :, None] * slots_w[:, None, :]).sum(axis=(1, 2))
            logit = -3.0 + 12.0 * affinity + c.quality[art]
            p_click = _sigmoid(logit) / np.sqrt(1.0 + pos)
            click = rng.random(n) < p_click
            dwell = np.exp(rng.normal(np.log(20_000) + 1.5 * affinity + 0.3 * c.quality[art], 0.9))
            dwell = np.minimum(dwell, 3 * 3600 * 1000).astype(np.int64)
            frames = [self._frame(u, art, "impression", t_imp, None, pos, req_idx, day)]
            ci = np.flatnonzero(click)
            t_click = t_imp[ci] + 800
            frames.append(self._frame(u[ci], art[ci], "click", t_click, dwell[ci], pos[ci], req_idx[ci], day))
            for etype, base_p in (("like", 0.06), ("comment", 0.012), ("favorite", 0.02), ("share", 0.01)):
                sel = ci[rng.random(len(ci)) < base_p * (1 + 3 * affinity[ci])]
                t_evt = t_imp[sel] + 800 + (dwell[sel] * rng.random(len(sel))).astype(np.int64)
                frames.append(self._frame(u[sel], art[sel], etype, t_evt, None, pos[sel], req_idx[sel], day))
            block = pd.concat(frames, ignore_index=True)
            # Events pushed past midnight by their dwell stay within the window ingest accepts.
            block["event_time"] = np.minimum(block["event_time"].to_numpy(), day_end - 1)
            yield block

    def _frame(self, u, art, etype, t, dwell, pos, req_idx, day):
        n = len(u)
        seq = np.arange(self.event_seq, self.event_seq + n)
        self.event_seq += n
        stamp = day.strftime("%Y%m%d")
        return pd.DataFrame({
            "event_id": pd.Series(seq).map(lambda s: f"e{stamp}-{s:010d}"),
            "user_id": pd.Series(u).map(_user_id),
            "article_id": pd.Series(art).map(_article_id),
            "event_type": etype,
            "event_time": t.astype(np.int64),
            "dwell_ms": pd.array(dwell if dwell is not None else [None] * n, dtype="Int64"),
            "position": pos.astype(np.int32),
            "request_id": pd.Series(req_idx).map(lambda r: f"r{stamp}-{r}"),
        })

    def _write_lines(self, path: Path, lines: list[str], mode="w"):
        with open(path, mode) as fh:
            for line in lines:
                fh.write(line)
                fh.write("\n")

    def generate(self) -> dict:
        p, rng = self.p, self.rng
        started = time.monotonic()
        summary = {"params": dataclasses.asdict(p), "start": self.start.isoformat(), "days": self.days,
                   "timezone": self.tz, "per_day": {}}
        first_start = epoch_ms(day_bounds(self.start, self.tz)[0])
        self._add_users(p.users, first_start - rng.integers(DAY_MS, 365 * DAY_MS, p.users))
        self._add_articles(p.articles, first_start - rng.integers(60_000, 30 * DAY_MS, p.articles))
        new_users = np.arange(p.users)
        new_articles = np.arange(p.articles)
        late_carry: list[pd.DataFrame] = []
        # A bar on a terminal only (tqdm's disable=None): logs and CI output stay line-based.
        for d in tqdm(range(self.days), desc="generating days", unit="day", leave=False, disable=None):
            day = self.start + dt.timedelta(days=d)
            s, e = (epoch_ms(x) for x in day_bounds(day, self.tz))
            if d > 0:
                n_new = rng.poisson(p.new_articles_per_day * p.articles)
                new_articles = self._add_articles(n_new, s + rng.integers(0, DAY_MS // 2, n_new))
                n_upd = rng.poisson(p.article_updates_per_day * p.articles)
                updated = rng.choice(np.flatnonzero(self.catalogue.publish_ms < s), n_upd, replace=False)
                t, w = _draw_tags(rng, n_upd, self.popularity)
                self.catalogue.tags[updated], self.catalogue.weights[updated] = t, w
                self.catalogue.updated_ms[updated] = s + rng.integers(0, DAY_MS // 2, n_upd)
                new_articles = np.concatenate([new_articles, updated])
                n_users = rng.poisson(p.new_users_per_day * p.users)
                new_users = self._add_users(n_users, s + rng.integers(0, DAY_MS // 2, n_users))
                drift = rng.random(self.n_users) < p.short_interest_drift
                self.short_tags[drift] = self._draw_short(int(drift.sum()))
            day_truth = {"bad": {}}
            # Articles and users landing on D, plus bad copies that refer to nothing.
            for source, records, kinds, idkey in (
                ("articles", self._article_records(new_articles), BAD_ARTICLE_KINDS, "article_id"),
                ("users", self._user_records(new_users), BAD_USER_KINDS, "user_id"),
            ):
                lines = [json.dumps(r) for r in records]
                bad, counts = self._bad_lines(lines, kinds, (s, e),
                                              lambda r, j, k=idkey, src=source, n=d: {**r, k: f"{src[0]}_bad_{n}_{j}"})
                self._write_lines(self._dir(source, day) / "part-00000.jsonl", lines + bad)
                day_truth[f"{source}_landed"] = len(lines) + len(bad)
                day_truth["bad"][source] = counts
            self._write_truth_short(day)
            # Events, by user block; late ones land tomorrow.
            out_dir = self._dir("events", day)
            landed = 0
            bad_counts = dict.fromkeys(BAD_EVENT_KINDS, 0)
            part = 0
            for carried in late_carry:
                self._write_lines(out_dir / f"part-late-{part:05d}.jsonl",
                                  carried.to_json(orient="records", lines=True).splitlines())
                landed += len(carried)
                part += 1
            late_carry = []
            for block in self._day_events(day, e, s):
                if d + 1 < self.days:
                    late = rng.random(len(block)) < p.late_rate
                    late_carry.append(block[late])
                    block = block[~late]
                lines = block.to_json(orient="records", lines=True).splitlines()
                bad, counts = self._bad_lines(lines, BAD_EVENT_KINDS, (s, e),
                                              lambda r, j, k=part: {**r, "event_id": f"{r['event_id']}-bad{k}x{j}"})
                lines += bad
                for key, value in counts.items():
                    bad_counts[key] += value
                self._write_lines(out_dir / f"part-{part:05d}.jsonl", lines)
                landed += len(lines)
                part += 1
            day_truth["events_landed"] = landed
            day_truth["bad"]["events"] = bad_counts
            summary["per_day"][day.isoformat()] = day_truth
            with open(self._truth("days", f"dt={day.isoformat()}.json"), "w") as fh:
                json.dump(day_truth, fh, indent=2)
            log.info("generated %s: %d events, %d articles, %d users landed (%.1fs)", day, landed,
                     day_truth["articles_landed"], day_truth["users_landed"], time.monotonic() - started)
        self._write_truth_static()
        summary["seconds"] = round(time.monotonic() - started, 2)
        with open(self._truth("summary.json"), "w") as fh:
            json.dump(summary, fh, indent=2)
        return summary

    def _write_truth_short(self, day: dt.date):
        rows = [{"user_id": _user_id(i),
                 "short_interests": {_tag_name(t): float(w) for t, w in zip(self.short_tags[i], self.short_w[i], strict=True)}}
                for i in range(self.n_users)]
        self._write_lines(self._truth("short_interests", f"dt={day.isoformat()}.jsonl"), [json.dumps(r) for r in rows])

    def _write_truth_static(self):
        users = [{"user_id": _user_id(i), "activity": float(self.activity[i]),
                  "long_interests": {_tag_name(t): float(w) for t, w in zip(self.long_tags[i], self.long_w[i], strict=True) if t >= 0}}
                 for i in range(self.n_users)]
        self._write_lines(self._truth("users.jsonl"), [json.dumps(r) for r in users])
        c = self.catalogue
        arts = [{"article_id": _article_id(i), "quality_logit": float(c.quality[i]),
                 "publish_time": int(c.publish_ms[i])} for i in range(len(c))]
        self._write_lines(self._truth("articles.jsonl"), [json.dumps(r) for r in arts])


def generate(raw: str | Path, start: dt.date, days: int, params: FeedParams | None = None,
             timezone: str = "UTC") -> dict:
    """Write ``days`` days of synthetic landing from ``start`` under ``raw``."""
    return FeedGenerator(raw, start, days, params or FeedParams(), timezone).generate()
