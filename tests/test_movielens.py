"""MovieLens for the offline harness (jobs/tools/movielens.py): row counts against the source
files, fields by hand, no label in the features."""

from __future__ import annotations

import csv
import math
from collections import defaultdict

import pandas as pd
import pytest

from jobs.tools import movielens
from tests.conftest import SHARED_DATA

SRC = SHARED_DATA / "ml-latest-small"


def _tiny():
    movies = pd.DataFrame({"movieId": ["1", "2", "3", "4"],
                           "genres": ["Comedy|Drama", "Drama", "(no genres listed)", "Action"]})
    tags = pd.DataFrame({"userId": ["a", "b", "c", "a", "b"], "movieId": ["1", "1", "3", "2", "3"],
                         "tag": ["Funny", "funny ", "dark", "rare", "dark"]})
    # user u: five ratings in time order 1, 2, 3, 4, 1 (the last two after a 0.6 cut).
    ratings = pd.DataFrame({"userId": ["u"] * 5, "movieId": ["1", "2", "3", "4", "1"],
                            "rating": [5.0, 3.0, 4.0, 4.5, 1.0], "timestamp": [10, 20, 30, 40, 50]})
    return ratings, movies, tags


def test_movie_tags_are_genres_and_the_tags_enough_movies_carry():
    _, movies, tags = _tiny()
    got = movielens.movie_tags(movies, tags, min_tag_movies=2)
    # "funny" names one movie, "rare" one, "dark" one: none kept at 2 movies.
    assert got == {"1": [("comedy", 1.0), ("drama", 1.0)], "2": [("drama", 1.0)], "3": [], "4": [("action", 1.0)]}
    got = movielens.movie_tags(movies, tags, min_tag_movies=1)
    assert got["1"] == [("funny", 2.0), ("comedy", 1.0), ("drama", 1.0)]   # two users, lower-cased and stripped
    assert got["3"] == [("dark", 2.0)]


def test_fields_and_examples_by_hand():
    ratings, movies, tags = _tiny()
    tags_of = movielens.movie_tags(movies, tags, min_tag_movies=1)
    rated = movielens.ordered(ratings)
    ex = movielens.examples(rated, tags_of, 0.6, 1.0, recent=1).to_pylist()
    # History: floor(0.6 x 5) = 3 ratings: movie 1 (5.0), 2 (3.0), 3 (4.0); examples: 4 and 1.
    assert [(r["event_id"], r["click"]) for r in ex] == [("u-4", 1), ("u-1", 0)]
    r = ex[0]
    shown = dict(zip(r["impressions_tags"], r["impressions_weights"], strict=True))
    assert shown == {"funny": 2.0, "drama": 2.0, "comedy": 1.0, "rare": 1.0, "dark": 2.0}
    assert dict(zip(r["clicks_tags"], r["clicks_weights"], strict=True)) == {"funny": 2.0, "comedy": 1.0,
                                                                             "drama": 1.0, "dark": 2.0}
    assert dict(zip(r["short_weight_tags"], r["short_weight_weights"], strict=True)) == {"dark": 2.0}  # last 1 rating
    # Every like of every history: funny 2, dark 2, comedy 1, drama 1 of 6.
    assert dict(zip(r["popular_tags"], r["popular_weights"], strict=True)) == pytest.approx(
        {"funny": 2 / 6, "dark": 2 / 6, "comedy": 1 / 6, "drama": 1 / 6})
    assert r["article_tags"] == [{"tag": "action", "weight": 1.0}]


def test_what_follows_the_cut_never_reaches_the_fields():
    ratings, movies, tags = _tiny()
    tags_of = movielens.movie_tags(movies, tags, min_tag_movies=1)
    users, clicks = movielens.split(movielens.ordered(ratings), tags_of, 0.6)
    later = ratings.copy()
    later.loc[later.timestamp > 30, "rating"] = 5.0          # the ratings after the cut change
    users2, clicks2 = movielens.split(movielens.ordered(later), tags_of, 0.6)
    assert users.drop_columns(["user_id"]).equals(users2.drop_columns(["user_id"]))
    assert clicks == [("u", ["action"])] and clicks2 == [("u", ["action"]), ("u", ["funny", "comedy", "drama"])]
    earlier = ratings.copy()
    earlier.loc[earlier.timestamp == 20, "rating"] = 5.0     # a history rating changes: the fields do
    users3, _ = movielens.split(movielens.ordered(earlier), tags_of, 0.6)
    assert not users.equals(users3)


@pytest.mark.skipif(not (SRC / "ratings.csv").is_file(), reason=f"no MovieLens at {SRC}")
def test_row_counts_against_the_source_file():
    per_user = defaultdict(list)
    with open(SRC / "ratings.csv", newline="") as f:
        for row in csv.DictReader(f):
            per_user[row["userId"]].append((int(row["timestamp"]), row["movieId"], float(row["rating"])))
    want_examples = want_clicks = 0
    for rows in per_user.values():
        rows.sort(key=lambda r: (r[0], r[1]))
        n = len(rows)
        want_examples += math.floor(0.8 * n) - math.floor(0.6 * n)
        want_clicks += sum(r[2] >= 4 for r in rows[math.floor(0.8 * n):])
    ratings, movies, tags = movielens.read(SRC)
    assert len(ratings) == sum(len(v) for v in per_user.values())
    tags_of = movielens.movie_tags(movies, tags)
    rated = movielens.ordered(ratings)
    assert movielens.examples(rated, tags_of, 0.6, 0.8).num_rows == want_examples
    users, clicks = movielens.split(rated, tags_of, 0.8)
    assert len(clicks) == want_clicks
    assert users.num_rows == len({u for u, _ in clicks})


def test_a_folder_without_the_files_is_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="ratings.csv.*ml-latest-small"):
        movielens.read(tmp_path)
