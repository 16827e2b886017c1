"""Reading the inputs several steps share: the tables the features of a day are computed from."""

from __future__ import annotations

import datetime as dt

from jobs.common.storage import Warehouse
from jobs.transforms.features import FeatureTables


def feature_tables(wh: Warehouse, date: dt.date) -> FeatureTables:
    """The tables of D-1, from which every feature of day ``date`` (D) is computed; a
    missing one raises MissingPartitionError naming it and the step to run."""
    prev = (date - dt.timedelta(days=1)).isoformat()
    hint = f" (features for {date} are computed from {prev}'s tables)"
    return FeatureTables(
        profile=wh.read_partition("user_tag_profile", prev, hint),
        tag_stats=wh.read_partition("tag_stats", prev, hint),
        tag_index=wh.read_partition("tag_index", prev, hint),
        articles=wh.read_partition("articles", prev, hint),
        users=wh.read_partition("users", prev, hint),
    )
