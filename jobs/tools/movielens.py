"""MovieLens (ml-latest-small, the public data set of the UTPM paper) as user-tag examples for
the offline harness (bench/movielens.py). Not a daily feed: its ratings spread over 22 years
with a median of one user a day, so the split is per user, in time.

- **Articles and tags.** A movie's tags are its genres (weight 1 each, "(no genres
  listed)" dropped) and the tags users applied to it (lower-cased, weight = the number of
  users who applied it), each tag kept when it names at least ``min_tag_movies`` movies; a
  movie keeps its ``article_tags`` heaviest tags (ties by name).
- **Clicks.** A rating >= ``LIKE`` (4) is a click; a lower rating an impression without one.
- **Time split.** Each user's ratings sorted by (timestamp, movieId): with n ratings, the
  first floor(cut x n) are the history as of ``cut``. Training examples are the ratings in
  [0.6 n, 0.8 n), the fields from the first 0.6 n; the test lists are made from the first
  0.8 n and judged on the clicks in the last 0.2 n (``split``), never on their history.
- **Fields** (the user_fields contract of tag_examples, ``<f>_tags`` / ``<f>_weights``, top
  ``length`` tags by weight, named after the user_tag_profile columns they stand in for,
  without time decay): ``impressions`` (the tag weights summed over every rated movie of the
  history: what the user was shown), ``clicks`` (over the liked ones), ``short_weight``
  (over the likes among the last ``recent`` ratings of the history) and ``popular`` (the
  tags' share of every history's likes, the same for every user: the context field).

Pure pandas and pyarrow: the harness needs no Spark.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

LIKE = 4.0
# The user_tag_profile columns the fields stand in for (tag_model.fields): what the user was
# shown (every rated movie), what they clicked (liked), and their short-term clicks.
FIELDS = ("impressions", "clicks", "short_weight")
TAG_WEIGHTS = pa.list_(pa.struct([("tag", pa.string()), ("weight", pa.float64())]))


def read(src: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(ratings, movies, tags) of an ml-latest-small folder, refusing a folder without them."""
    src = Path(src)
    missing = [n for n in ("ratings.csv", "movies.csv", "tags.csv") if not (src / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{src}: no {', '.join(missing)}; point --src at an unpacked ml-latest-small folder")
    ratings = pd.read_csv(src / "ratings.csv", dtype={"userId": str, "movieId": str})
    movies = pd.read_csv(src / "movies.csv", dtype={"movieId": str})
    tags = pd.read_csv(src / "tags.csv", dtype={"userId": str, "movieId": str, "tag": str})
    return ratings, movies, tags


def movie_tags(movies: pd.DataFrame, tags: pd.DataFrame, min_tag_movies: int = 3,
               article_tags: int = 8) -> dict[str, list[tuple[str, float]]]:
    """movieId -> [(tag, weight)], heaviest first."""
    weights: dict[str, Counter] = {}
    for movie, genres in zip(movies.movieId, movies.genres, strict=True):
        weights[movie] = Counter({g.strip().lower(): 1.0 for g in str(genres).split("|")
                                  if g.strip() and g != "(no genres listed)"})
    applied = tags.assign(tag=tags.tag.astype(str).str.strip().str.lower())
    applied = applied[applied.tag != ""].drop_duplicates(["userId", "movieId", "tag"])
    kept = applied.groupby("tag").movieId.nunique()
    kept = set(kept[kept >= min_tag_movies].index)
    for (movie, tag), n in applied[applied.tag.isin(kept)].groupby(["movieId", "tag"]).size().items():
        weights.setdefault(movie, Counter())[tag] += float(n)
    return {m: sorted(w.items(), key=lambda kv: (-kv[1], kv[0]))[:article_tags] for m, w in weights.items()}


def ordered(ratings: pd.DataFrame) -> pd.DataFrame:
    """Ratings sorted per user by time, with each rating's position and the user's count."""
    out = ratings.sort_values(["userId", "timestamp", "movieId"], kind="stable").reset_index(drop=True)
    out["pos"] = out.groupby("userId").cumcount()
    out["n"] = out.groupby("userId").userId.transform("size")
    return out


def before(rated: pd.DataFrame, cut: float) -> pd.DataFrame:
    """Each user's first floor(cut x n) ratings."""
    return rated[rated.pos < np.floor(cut * rated.n)]


def between(rated: pd.DataFrame, lo: float, hi: float) -> pd.DataFrame:
    return rated[(rated.pos >= np.floor(lo * rated.n)) & (rated.pos < np.floor(hi * rated.n))]


def _top(weights: Counter, length: int) -> tuple[list[str], list[float]]:
    top = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[:length]
    return [t for t, _ in top], [float(w) for _, w in top]


def user_fields(history: pd.DataFrame, tags_of: dict[str, list[tuple[str, float]]], length: int = 20,
                recent: int = 10) -> dict[str, dict[str, tuple[list[str], list[float]]]]:
    """user -> {field: (tags, weights)} from the history rows (ratings before the cut), and
    ``popular`` for every user."""
    popular: Counter = Counter()
    out = {}
    for user, rows in history.groupby("userId", sort=True):
        fields = {f: Counter() for f in FIELDS}
        liked = (rows.rating >= LIKE).to_numpy()
        movies = rows.movieId.to_numpy()
        for i, (movie, like) in enumerate(zip(movies, liked, strict=True)):
            for tag, w in tags_of.get(movie, ()):
                fields["impressions"][tag] += w
                if like:
                    fields["clicks"][tag] += w
                    popular[tag] += w
                    if i >= len(movies) - recent:
                        fields["short_weight"][tag] += w
        out[user] = {f: _top(c, length) for f, c in fields.items()}
    total = sum(popular.values()) or 1.0
    pop = _top(Counter({t: w / total for t, w in popular.items()}), length)
    for fields in out.values():
        fields["popular"] = pop
    return out


def _field_columns(users: list[str], fields: dict) -> dict[str, pa.Array]:
    """The <f>_tags / <f>_weights columns of ``users``; a user without history gets empty
    fields and the common popular one."""
    pop = next(iter(fields.values()))["popular"] if fields else ([], [])
    empty = {**{f: ([], []) for f in FIELDS}, "popular": pop}
    cols = {}
    for f in (*FIELDS, "popular"):
        got = [fields.get(u, empty)[f] for u in users]
        cols[f"{f}_tags"] = pa.array([t for t, _ in got], pa.list_(pa.string()))
        cols[f"{f}_weights"] = pa.array([w for _, w in got], pa.list_(pa.float64()))
    return cols


def examples(rated: pd.DataFrame, tags_of: dict, lo: float, hi: float, length: int = 20,
             recent: int = 10) -> pa.Table:
    """One row per rating in [lo n, hi n) of each user (its movie's tags, click = rating >=
    LIKE), the user's fields from the first lo n ratings: the tag_examples contract."""
    fields = user_fields(before(rated, lo), tags_of, length, recent)
    rows = between(rated, lo, hi)
    users = rows.userId.tolist()
    cols = {"event_id": pa.array([f"{u}-{m}" for u, m in zip(users, rows.movieId, strict=True)]),
            "user_id": pa.array(users, pa.string()),
            "article_tags": pa.array([[{"tag": t, "weight": w} for t, w in tags_of.get(m, ())] for m in rows.movieId],
                                     TAG_WEIGHTS),
            "click": pa.array((rows.rating >= LIKE).astype("int32").to_numpy())}
    return pa.table(cols | _field_columns(users, fields))


def split(rated: pd.DataFrame, tags_of: dict, cut: float = 0.8, length: int = 20,
          recent: int = 10, hi: float = 1.0) -> tuple[pa.Table, list[tuple[str, list[str]]]]:
    """(one row per user with a click in [cut n, hi n), their fields from the ratings before
    it; (user, the clicked movie's tags) per click there)."""
    clicked = between(rated, cut, hi)
    clicked = clicked[clicked.rating >= LIKE]
    clicks = [(u, [t for t, _ in tags_of.get(m, ())]) for u, m in zip(clicked.userId, clicked.movieId, strict=True)]
    fields = user_fields(before(rated, cut), tags_of, length, recent)
    users = sorted(set(clicked.userId))
    return pa.table({"user_id": pa.array(users, pa.string())} | _field_columns(users, fields)), clicks


def validation_users(users: list[str], share: float, seed: int) -> set[str]:
    """A seeded ``share`` of the users, held out of training to stop it early."""
    ordered_users = sorted(users)
    pick = np.random.default_rng(seed).choice(len(ordered_users), max(1, math.floor(share * len(users))), replace=False)
    return {ordered_users[i] for i in pick}
