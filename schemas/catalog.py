"""Where each table lives, how it is partitioned, and the event types. Pure Python: no Spark import.

Every table is partitioned by the logical date ``dt`` (YYYY-MM-DD) and lives at
``<warehouse>/<name>/dt=<D>/``. Run reports live at ``<warehouse>/_runs/<step>/<D>.json``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

PARTITION_COLUMN = "dt"
# A Delta table records each day it holds as a file here, once the day's commit is in
# (jobs/common/storage.py): the Delta log keeps no day whose rows are all gone.
DELTA_DAYS = "_tagrecall_days"

# event_type of the events table: a click carries dwell_ms, the others count as signals.
EVENT_TYPES = ("impression", "click", "like", "comment", "favorite", "share")

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def absolute_uri(uri: str) -> str:
    """Local paths become absolute ``file:`` URIs; URIs with a scheme are kept as they are."""
    if _SCHEME.match(uri) or uri.startswith("file:"):
        return uri
    return "file://" + os.path.abspath(uri)


@dataclass(frozen=True)
class Table:
    name: str
    grain: str
    key: tuple[str, ...]
    written_by: str

    def location(self, warehouse: str) -> str:
        return f"{warehouse.rstrip('/')}/{self.name}"

    def partition_location(self, warehouse: str, date: str) -> str:
        return f"{self.location(warehouse)}/{PARTITION_COLUMN}={date}"


TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table("events", "one validated event", ("event_id",), "ingest"),
        Table("rejected", "one refused raw record", ("source", "raw"), "ingest"),
        Table("articles", "article, as of D", ("article_id",), "ingest"),
        Table("users", "user, as of D", ("user_id",), "ingest"),
        Table("user_tag_profile", "user x tag", ("user_id", "tag"), "profiles"),
        Table("tag_index", "tag x article", ("tag", "rank"), "index"),
        Table("tag_stats", "tag", ("tag",), "index"),
        Table("training_triples", "impression x tag", ("event_id", "tag"), "triples"),
        Table("tag_examples", "impression", ("event_id",), "triples"),
        Table("user_tag_scores", "user x rank", ("user_id", "rank"), "tag_model"),
        Table("model_top_tags", "user x rank", ("user_id", "rank"), "export"),
        Table("user_top_tags", "user x rank", ("user_id", "rank"), "export"),
        Table("recall_eval", "metric x method", ("method", "metric"), "evaluate"),
    )
}


def table(name: str) -> Table:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known tables: {', '.join(sorted(TABLES))}") from None


def run_report_location(warehouse: str, step: str, date: str) -> str:
    return f"{warehouse.rstrip('/')}/_runs/{step}/{date}.json"


def models_location(warehouse: str) -> str:
    return f"{warehouse.rstrip('/')}/models"
