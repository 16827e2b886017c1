"""The model's feature columns: one specification shared by the feature builder (Spark),
the training triples, the models and export. Pure Python: no Spark import.

The columns are described in jobs/transforms/features.py, which computes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.config import Config

# The context of an impression; export scores every candidate at a reference context.
CONTEXT = ("position", "request_index", "hour")


@dataclass(frozen=True)
class FeatureSpec:
    categorical: tuple[str, ...]
    numeric: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return self.categorical + self.numeric

    def to_dict(self) -> dict:
        return {"categorical": list(self.categorical), "numeric": list(self.numeric)}


def feature_spec(config: Config) -> FeatureSpec:
    horizons = list(config.profiles.half_life_days)
    categorical = ("tag", *[f"u_{k}" for k in config.features.user_features], "position", "hour")
    numeric = (*[f"{h}_weight" for h in horizons], *[f"{h}_rank" for h in horizons],
               "user_tag_ctr", "user_tag_impressions", "tag_impressions", "tag_clicks", "tag_ctr",
               "tag_mean_dwell", "tag_articles", "match", "request_index")
    return FeatureSpec(categorical, numeric)
