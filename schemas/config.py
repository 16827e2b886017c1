"""One TOML configuration for every tunable, with built-in defaults.

Precedence: built-in defaults < ``--config FILE`` < command-line flags (``--warehouse``,
``--set section.key=value``...). Unknown sections or keys and values of the wrong type or
out of range are refused with a ConfigError naming them.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from schemas.catalog import EVENT_TYPES

TABLE_FORMATS = ("parquet", "delta")
RAW_FORMATS = ("json", "parquet")


class ConfigError(ValueError):
    """A configuration file or override that cannot be used as given."""


def _require(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {message}")


@dataclass(frozen=True)
class StorageConfig:
    warehouse: str = "warehouse"
    raw: str = "raw"
    format: str = "parquet"
    raw_format: str = "json"
    # Delta: `tagrecall vacuum` (and the DAG's vacuum task) deletes files that no version of
    # the last this-many hours needs; time travel reaches back as far. Delta's own default (7 days).
    vacuum_retain_hours: float = 168.0

    def validate(self, where: str) -> None:
        _require(self.format in TABLE_FORMATS, f"{where}.format",
                 f"{self.format!r} is not one of {', '.join(TABLE_FORMATS)}")
        _require(self.raw_format in RAW_FORMATS, f"{where}.raw_format",
                 f"{self.raw_format!r} is not one of {', '.join(RAW_FORMATS)}")
        _require(bool(self.warehouse), f"{where}.warehouse", "must not be empty")
        _require(bool(self.raw), f"{where}.raw", "must not be empty")
        _require(self.vacuum_retain_hours >= 0, f"{where}.vacuum_retain_hours", "must be >= 0")


@dataclass(frozen=True)
class TimeConfig:
    # Day boundaries of the logical date D are midnights in this zone.
    timezone: str = "UTC"

    def validate(self, where: str) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"{where}.timezone: {self.timezone!r} is not an IANA time zone "
                              "(e.g. 'UTC', 'Asia/Shanghai')") from None


@dataclass(frozen=True)
class IngestConfig:
    # Events may land up to this long after the day they happened (late data).
    late_tolerance_hours: float = 24.0
    # Events stamped up to this far after the day's end are clock skew, not the future.
    clock_skew_minutes: float = 5.0
    # Dwell above this is refused as absurd (a tab left open, a broken client timer).
    max_dwell_ms: int = 6 * 3600 * 1000
    max_position: int = 10_000
    # The step fails (after writing `rejected`) when more than this share of events is refused.
    max_reject_ratio: float = 0.05
    # ...for sources with at least this many landed records (a day's few new users should
    # not fail the step over one bad record).
    reject_ratio_min_records: int = 100

    def validate(self, where: str) -> None:
        _require(self.late_tolerance_hours >= 0, f"{where}.late_tolerance_hours", "must be >= 0")
        _require(self.clock_skew_minutes >= 0, f"{where}.clock_skew_minutes", "must be >= 0")
        _require(self.max_dwell_ms > 0, f"{where}.max_dwell_ms", "must be > 0")
        _require(self.max_position > 0, f"{where}.max_position", "must be > 0")
        _require(self.reject_ratio_min_records >= 0, f"{where}.reject_ratio_min_records", "must be >= 0")
        _require(0 <= self.max_reject_ratio <= 1, f"{where}.max_reject_ratio",
                 f"{self.max_reject_ratio} is not between 0 and 1")


QUALITY_ACTIONS = ("fail", "warn", "off")


@dataclass(frozen=True)
class QualityConfig:
    """Ingest's volume gate (jobs/transforms/quality.py): D's events, users, clicks and CTR
    against their median over the last window_days ingested days."""

    # fail: the step fails before writing events (a half-landed day must not train a
    # model); warn: a warning in the log and the run report; off: not checked.
    action: str = "fail"
    window_days: int = 7
    # Checked only once this many earlier days have been ingested.
    min_days: int = 3
    # events, users and clicks may be from 1/x to x times their median.
    max_volume_ratio: float = 3.0
    # The click-through rate may be from 1/x to x times its median.
    max_ctr_ratio: float = 1.5

    def validate(self, where: str) -> None:
        _require(self.action in QUALITY_ACTIONS, f"{where}.action",
                 f"{self.action!r} is not one of {', '.join(QUALITY_ACTIONS)}")
        _require(self.window_days > 0, f"{where}.window_days", "must be > 0")
        _require(0 < self.min_days <= self.window_days, f"{where}.min_days", "must be 1..quality.window_days")
        _require(self.max_volume_ratio >= 1, f"{where}.max_volume_ratio", "must be >= 1")
        _require(self.max_ctr_ratio >= 1, f"{where}.max_ctr_ratio", "must be >= 1")


def _default_half_lives() -> dict[str, float]:
    return {"long": 30.0, "short": 3.0}


def _default_event_weights() -> dict[str, float]:
    return {"impression": 0.0, "click": 1.0, "like": 2.0, "comment": 2.0, "favorite": 3.0,
            "share": 3.0}


@dataclass(frozen=True)
class ProfilesConfig:
    half_life_days: dict[str, float] = field(default_factory=_default_half_lives)
    event_weights: dict[str, float] = field(default_factory=_default_event_weights)
    # A click adds dwell_weight * min(log1p(dwell_sec) / log1p(dwell_cap_sec), 1).
    dwell_weight: float = 1.0
    dwell_cap_sec: float = 600.0
    # A (user, tag) row is dropped when every horizon's weight and its decayed impression
    # count are below min_weight; then each user keeps the max_tags_per_user tags with the
    # largest share of one of their horizons (see jobs/profiles.py, "Bounds").
    min_weight: float = 1e-3
    max_tags_per_user: int = 100
    # Decayed impression and click counts (for the user's own click-through rate on a tag)
    # use this horizon's half-life.
    counts_horizon: str = "long"
    # Users without events on D only decay: their rows skip the merge's shuffle when D's
    # active users, broadcast to split the profile, number at most this (0: always merge all).
    idle_path_max_users: int = 1_000_000
    # The split costs two broadcast lookups per profile row: it is used only when at least
    # this share of D-1's profile users (its run report's count) have no events on D.
    idle_path_min_idle_share: float = 0.3
    # The profile is stored bucketed by user_id in this many files (Spark's hash of user_id
    # modulo buckets), so the next day's merge reads it already partitioned by user and
    # shuffles only D's contribution. Each bucket is one task of the merge: on a cluster, set
    # it near spark.shuffle_partitions. A changed count re-buckets once (one shuffle of the
    # profile). 0: plain Parquet files, the whole profile shuffled every day.
    buckets: int = 8

    def validate(self, where: str) -> None:
        _require(self.idle_path_max_users >= 0, f"{where}.idle_path_max_users", "must be >= 0")
        _require(0.0 <= self.idle_path_min_idle_share <= 1.0, f"{where}.idle_path_min_idle_share",
                 "must be between 0 and 1")
        _require(self.buckets >= 0, f"{where}.buckets", "must be >= 0 (0: not bucketed)")
        _require(len(self.half_life_days) > 0, f"{where}.half_life_days", "needs at least one horizon")
        for name, days in self.half_life_days.items():
            _require(name.isidentifier(), f"{where}.half_life_days.{name}",
                     "horizon names must be identifiers (they become column names)")
            _require(days > 0, f"{where}.half_life_days.{name}", f"{days} is not > 0")
        unknown = sorted(set(self.event_weights) - set(EVENT_TYPES))
        _require(not unknown, f"{where}.event_weights",
                 f"unknown event types {unknown}; known: {', '.join(EVENT_TYPES)}")
        _require(self.dwell_cap_sec > 0, f"{where}.dwell_cap_sec", "must be > 0")
        _require(self.min_weight >= 0, f"{where}.min_weight", "must be >= 0")
        _require(self.max_tags_per_user > 0, f"{where}.max_tags_per_user", "must be > 0")
        _require(self.counts_horizon in self.half_life_days, f"{where}.counts_horizon",
                 f"{self.counts_horizon!r} is not one of the horizons in half_life_days "
                 f"({', '.join(self.half_life_days)})")


INDEX_RANKINGS = ("quality", "clicks", "exposure", "learned")


@dataclass(frozen=True)
class IndexConfig:
    # How a tag's articles are ranked (jobs/transforms/item_ranking.py): "clicks" (decayed
    # clicks), "exposure" (smoothed CTR x decayed impressions), "quality" (smoothed CTR and
    # dwell lift x freshness) or "learned" (the clicks a Poisson regression fitted on D-1's
    # features and D's clicks expects tomorrow), each times the article's weight on the tag.
    # The default was chosen on KuaiRand-Pure's validation days (docs: decisions, 2026-12-07).
    ranking: str = "exposure"
    top_k: int = 200
    # Of each tag's top_k places, up to this many go to new articles first (the cold-start
    # quota), ranked by tag weight x freshness.
    new_article_slots: int = 30
    # New: first published or first shown within this many days of the end of D.
    new_article_days: float = 1.0
    freshness_half_life_days: float = 3.0
    max_age_days: float = 30.0
    quality_window_days: int = 14
    # Impressions, clicks and dwell in the quality window decay with this half-life.
    quality_half_life_days: float = 7.0
    # The volume rankings ("clicks", "exposure") decay each event with this half-life.
    recent_half_life_days: float = 1.0
    # Pseudo-impressions of the global click-through rate added to every article.
    prior_strength: float = 50.0

    def validate(self, where: str) -> None:
        _require(self.ranking in INDEX_RANKINGS, f"{where}.ranking",
                 f"{self.ranking!r} is not one of {', '.join(INDEX_RANKINGS)}")
        _require(self.top_k > 0, f"{where}.top_k", "must be > 0")
        _require(self.new_article_slots >= 0, f"{where}.new_article_slots", "must be >= 0")
        _require(self.new_article_days > 0, f"{where}.new_article_days", "must be > 0")
        _require(self.recent_half_life_days > 0, f"{where}.recent_half_life_days", "must be > 0")
        _require(self.freshness_half_life_days > 0, f"{where}.freshness_half_life_days", "must be > 0")
        _require(self.max_age_days > 0, f"{where}.max_age_days", "must be > 0")
        _require(self.quality_window_days > 0, f"{where}.quality_window_days", "must be > 0")
        _require(self.quality_half_life_days > 0, f"{where}.quality_half_life_days", "must be > 0")
        _require(self.prior_strength >= 0, f"{where}.prior_strength", "must be >= 0")


EXPORT_RANKINGS = ("tag_model", "multitask", "profile")


@dataclass(frozen=True)
class ExportConfig:
    top_n: int = 20
    candidate_tags: int = 50
    # How the candidates are ranked (jobs/export.py): "tag_model" (the user-tag model's
    # score, fused with the multi-task model's rank when multitask_weight > 0),
    # "multitask" (p_click x E[dwell | click] only) or "profile" (the blend, no model).
    # Each falls back to the next when its model has not written anything for D.
    ranking: str = "tag_model"
    # Reciprocal-rank fusion: 1 / (fusion_k + tag-model rank) + multitask_weight / (fusion_k
    # + multi-task rank); 0 ranks by the tag model alone and skips the multi-task scoring.
    multitask_weight: float = 0.0
    # ... + mix_weight / (fusion_k + the rank by the mix heuristic of evaluate: the user's
    # share of decayed impressions + evaluate.mix_click_weight x the tag's click share).
    mix_weight: float = 1.0
    fusion_k: float = 60.0

    def validate(self, where: str) -> None:
        _require(self.top_n > 0, f"{where}.top_n", "must be > 0")
        _require(self.ranking in EXPORT_RANKINGS, f"{where}.ranking",
                 f"{self.ranking!r} is not one of {', '.join(EXPORT_RANKINGS)}")
        _require(self.multitask_weight >= 0, f"{where}.multitask_weight", "must be >= 0")
        _require(self.mix_weight >= 0, f"{where}.mix_weight", "must be >= 0")
        _require(self.fusion_k >= 0, f"{where}.fusion_k", "must be >= 0")
        _require(self.candidate_tags >= self.top_n, f"{where}.candidate_tags", "must be >= export.top_n")


@dataclass(frozen=True)
class PublishConfig:
    # Empty: the TAGRECALL_REDIS_URL environment variable, else publishing is not configured.
    # redis://host:port/db, or rediss:// for TLS. A password may be given in the URL, but the
    # environment variable named by password_env is the better place; reports redact both.
    redis_url: str = ""
    password_env: str = "TAGRECALL_REDIS_PASSWORD"
    # The writer's ACL user (publish), from this variable; unset: the URL's user or default.
    username_env: str = "TAGRECALL_REDIS_USER"
    # The reader's ACL user and password (the online recall); unset: the writer's.
    reader_username_env: str = "TAGRECALL_REDIS_READER_USER"
    reader_password_env: str = "TAGRECALL_REDIS_READER_PASSWORD"
    tls: bool = False
    # With TLS: the CA certificate file that signed the server's certificate (empty: the
    # system's trust store).
    tls_ca_file: str = ""
    # Every key starts with this, so one Redis can serve several feeds.
    key_prefix: str = "tagrecall"
    # Commands sent per pipeline round trip.
    pipeline_size: int = 1000
    socket_timeout_sec: float = 10.0

    def validate(self, where: str) -> None:
        _require(bool(self.key_prefix) and ":" not in self.key_prefix, f"{where}.key_prefix",
                 "must be a non-empty string without ':'")
        _require(self.pipeline_size > 0, f"{where}.pipeline_size", "must be > 0")
        _require(self.socket_timeout_sec > 0, f"{where}.socket_timeout_sec", "must be > 0")
        _require(not self.redis_url or self.redis_url.startswith(("redis://", "rediss://", "unix://")),
                 f"{where}.redis_url", "must start with redis://, rediss:// or unix://")


@dataclass(frozen=True)
class EvaluateConfig:
    # Tags per user for the tag metrics (click coverage, tagged impressions, tag CTR).
    top_n: int = 5
    # Articles the recall returns per user (the served export.top_n tags x tag_index, merged).
    recall_k: int = 100
    # The ``mix`` baseline (jobs/transforms/tag_lists.py): a tag's share of the user's
    # decayed impressions + mix_click_weight x its share of all decayed clicks, over the
    # user's tags and the mix_global_tags most clicked ones.
    mix_click_weight: float = 8.0
    mix_global_tags: int = 25
    # The popular_items channel: D's most clicked articles, each click decayed with this
    # half-life. Fixed here, apart from the index's settings, so the reference the tag
    # channel is judged against does not move when the index is tuned.
    popular_half_life_days: float = 1.0

    def validate(self, where: str) -> None:
        _require(self.top_n > 0, f"{where}.top_n", "must be > 0")
        _require(self.recall_k > 0, f"{where}.recall_k", "must be > 0")
        _require(self.mix_click_weight >= 0, f"{where}.mix_click_weight", "must be >= 0")
        _require(self.mix_global_tags > 0, f"{where}.mix_global_tags", "must be > 0")
        _require(self.popular_half_life_days > 0, f"{where}.popular_half_life_days", "must be > 0")


RECALL_MERGES = ("rank_sum", "probability", "quota")


@dataclass(frozen=True)
class RecallConfig:
    # How a user's tag lists become one list of articles (jobs/online/recall.py): "rank_sum"
    # (sum of 1/log2(1 + tag rank) x index score), "probability" (sum of p(tag | user) x
    # p(article | tag), the tag's scores normalised to sum to one) or "quota" (each tag's
    # best articles, slots in proportion to 1/log2(1 + tag rank)). Publish records it with
    # the version, so the online recall merges as the day was evaluated.
    merge: str = "probability"

    def validate(self, where: str) -> None:
        _require(self.merge in RECALL_MERGES, f"{where}.merge",
                 f"{self.merge!r} is not one of {', '.join(RECALL_MERGES)}")


GUARD_METRICS = ("recall_at_k", "click_coverage", "tagged_impressions", "tag_ctr")
GUARD_BASELINES = ("long", "short", "blend", "mix", "global")


def _default_guard_baselines() -> list[str]:
    return ["mix", "blend", "global"]


@dataclass(frozen=True)
class GuardConfig:
    """Export serves the best of ``baselines`` instead of the model's ranking while the model
    has done worse than that baseline on ``metric``, pooled over the last ``window_days``
    evaluated days (jobs/transforms/guard.py)."""

    enabled: bool = True
    metric: str = "recall_at_k"
    window_days: int = 3
    # Evaluations of days older than this (before D) are not used.
    max_age_days: int = 7
    baselines: list[str] = field(default_factory=_default_guard_baselines)

    def validate(self, where: str) -> None:
        _require(self.metric in GUARD_METRICS, f"{where}.metric",
                 f"{self.metric!r} is not one of {', '.join(GUARD_METRICS)}")
        _require(self.window_days > 0, f"{where}.window_days", "must be > 0")
        _require(self.max_age_days >= self.window_days, f"{where}.max_age_days", "must be >= guard.window_days")
        unknown = [b for b in self.baselines if b not in GUARD_BASELINES]
        _require(bool(self.baselines) and not unknown, f"{where}.baselines",
                 f"must be a non-empty list of {', '.join(GUARD_BASELINES)}"
                 + (f"; unknown: {unknown}" if unknown else ""))
        _require(len(set(self.baselines)) == len(self.baselines), f"{where}.baselines", "must not repeat a method")


def redact_url(url: str) -> str:
    """``redis://user:secret@host`` -> ``redis://user:***@host``: for logs and reports."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _default_user_features() -> list[str]:
    return ["age", "gender", "city_tier", "device"]


@dataclass(frozen=True)
class FeaturesConfig:
    # Keys of users.features used as categorical model inputs (a missing key is its own value).
    user_features: list[str] = field(default_factory=_default_user_features)
    # A user's click-through rate on a tag is shrunk towards the tag's own with this many
    # pseudo-impressions.
    user_ctr_prior: float = 5.0
    # Export scores every candidate at this context (see DESIGN.md, no train/serve skew).
    # reference_position -1: no position, what training sees on a feed without positions.
    reference_position: int = 0
    reference_hour: int = 20

    def validate(self, where: str) -> None:
        _require(all(f and f.replace("_", "").isalnum() for f in self.user_features), f"{where}.user_features",
                 "names must be letters, digits and underscores (they become column names)")
        _require(self.user_ctr_prior >= 0, f"{where}.user_ctr_prior", "must be >= 0")
        _require(self.reference_position >= -1, f"{where}.reference_position",
                 "must be >= 0, or -1 for no position (a feed that records none)")
        _require(0 <= self.reference_hour <= 23, f"{where}.reference_hour", "must be 0..23")


ARCHITECTURES = ("shared_bottom", "mmoe", "ple")
LOSS_WEIGHTINGS = ("uncertainty", "equal", "fixed", "dwa", "dtp", "gradnorm", "mgda", "pcgrad")
TASKS = ("click", "dwell")


def _default_fixed_weights() -> dict[str, float]:
    return {"click": 1.0, "dwell": 0.5}


@dataclass(frozen=True)
class ModelConfig:
    # Train on the triples of the window_days days ending at D; the last one validates.
    window_days: int = 7
    loss_weighting: str = "uncertainty"
    fixed_weights: dict[str, float] = field(default_factory=_default_fixed_weights)
    # The history- and gradient-based weightings (models/weighting.py).
    # Uncertainty: the log variances' learning rate as a multiple of learning_rate.
    log_var_lr_multiplier: float = 1.0
    gradnorm_alpha: float = 1.5
    gradnorm_learning_rate: float = 0.025
    dwa_temperature: float = 2.0
    dtp_gamma: float = 2.0
    dtp_smoothing: float = 0.9
    # Which tasks the model learns: both, or one for the single-task baselines.
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    embedding_dim: int = 8
    # shared_bottom (bottom_units), mmoe or ple (experts of expert_units; models/multitask.py).
    architecture: str = "shared_bottom"
    experts: int = 4
    task_experts: int = 2
    ple_levels: int = 1
    expert_units: list[int] = field(default_factory=lambda: [32])
    # Dwell supervised on clicked rows (E[dwell | click]), or on every impression as
    # p_click x E[log1p dwell | click] against 0 without a click (ESMM's entire space).
    dwell_space: str = "clicked"
    bottom_units: list[int] = field(default_factory=lambda: [64, 32])
    tower_units: list[int] = field(default_factory=lambda: [16])
    cross_buckets: int = 4096
    learning_rate: float = 0.002
    batch_size: int = 1024
    epochs: int = 8
    patience: int = 2
    seed: int = 0
    # The new model is promoted unless its validation CTR AUC is below the current model's
    # (on the same validation day) by more than this.
    auc_tolerance: float = 0.005
    # ...and its validation calibration (mean p_click / click rate) lies within these.
    min_calibration: float = 0.5
    max_calibration: float = 2.0

    def validate(self, where: str) -> None:
        _require(0 <= self.min_calibration <= 1 <= self.max_calibration, f"{where}.min_calibration/max_calibration",
                 f"need 0 <= min_calibration <= 1 <= max_calibration, got {self.min_calibration}, "
                 f"{self.max_calibration}")
        _require(self.window_days >= 2, f"{where}.window_days", "must be >= 2 (one day validates)")
        _require(self.loss_weighting in LOSS_WEIGHTINGS, f"{where}.loss_weighting",
                 f"{self.loss_weighting!r} is not one of {', '.join(LOSS_WEIGHTINGS)}")
        _require(set(self.fixed_weights) <= set(TASKS), f"{where}.fixed_weights", f"keys must be among {TASKS}")
        _require(bool(self.tasks) and set(self.tasks) <= set(TASKS), f"{where}.tasks",
                 f"must be a non-empty subset of {list(TASKS)}")
        _require(all(u > 0 for u in self.bottom_units + self.tower_units), f"{where}.bottom_units/tower_units",
                 "layer sizes must be > 0")
        for key in ("embedding_dim", "cross_buckets", "batch_size", "epochs"):
            _require(getattr(self, key) > 0, f"{where}.{key}", "must be > 0")
        _require(self.learning_rate > 0, f"{where}.learning_rate", "must be > 0")
        _require(self.patience >= 0, f"{where}.patience", "must be >= 0")
        _require(self.auc_tolerance >= 0, f"{where}.auc_tolerance", "must be >= 0")
        _require(self.log_var_lr_multiplier > 0, f"{where}.log_var_lr_multiplier", "must be > 0")
        _require(self.architecture in ARCHITECTURES, f"{where}.architecture",
                 f"{self.architecture!r} is not one of {', '.join(ARCHITECTURES)}")
        _require(self.dwell_space in ("clicked", "entire"), f"{where}.dwell_space", "must be clicked or entire")
        _require(self.dwell_space == "clicked" or set(self.tasks) == set(TASKS), f"{where}.dwell_space",
                 "entire needs both tasks (the click head's probability multiplies the dwell head)")
        for key in ("experts", "task_experts", "ple_levels"):
            _require(getattr(self, key) > 0, f"{where}.{key}", "must be > 0")
        _require(bool(self.expert_units) and all(u > 0 for u in self.expert_units), f"{where}.expert_units",
                 "needs at least one layer size, each > 0")
        _require(self.gradnorm_alpha >= 0, f"{where}.gradnorm_alpha", "must be >= 0")
        for key in ("gradnorm_learning_rate", "dwa_temperature"):
            _require(getattr(self, key) > 0, f"{where}.{key}", "must be > 0")
        _require(self.dtp_gamma >= 0, f"{where}.dtp_gamma", "must be >= 0")
        _require(0 <= self.dtp_smoothing < 1, f"{where}.dtp_smoothing", "must be in [0, 1)")
        _require(self.loss_weighting != "gradnorm" or self.architecture != "shared_bottom"
                 or bool(self.bottom_units), f"{where}.bottom_units",
                 "gradnorm needs a shared layer: give bottom_units at least one size")


TAG_MODEL_LOSSES = ("joint", "split", "softmax")
# The user tower: UTPM's attention and FM crossing, or a baseline (of the UTPM paper, AFM, NFM) over the
# same fields and label side (models/utpm.py).
TAG_MODEL_TOWERS = ("utpm", "youtube_dnn", "fm", "dcn", "autoint", "afm", "nfm")
TAG_MODEL_ECHOES = ("posterior", "share")


def _default_tag_fields() -> list[str]:
    return ["long_weight", "short_weight", "impressions", "clicks"]


@dataclass(frozen=True)
class TagModelConfig:
    """The user-tag profile model (models/utpm.py) and its daily step (jobs/tag_model.py)."""

    enabled: bool = True
    loss: str = "softmax"
    tower: str = "utpm"
    # Train on the tag examples of the window_days days ending at D; the last one validates.
    window_days: int = 7
    # The user's multi-valued fields: each a column of user_tag_profile (a horizon's
    # weight, or the decayed impressions or clicks), the user's top field_length tags by it.
    fields: list[str] = field(default_factory=_default_tag_fields)
    # A context field, the same for every user of a day: the field_length tags with the
    # most decayed clicks in that day's tag_stats, weighted by their share of the clicks.
    popular_field: bool = True
    # How the user's own field weights meet the tower's score (models/utpm.FieldEcho):
    # "posterior" (p(t | u) ~ exp(s) + the weighted counts) or "share" (s + beta x share).
    echo: str = "posterior"
    field_length: int = 20
    # An impression's article contributes at most this many tags (by weight) to the loss.
    article_tags: int = 8
    embedding_dim: int = 16
    heads: int = 2
    units: list[int] = field(default_factory=lambda: [64])
    user_dim: int = 32
    learning_rate: float = 0.003
    batch_size: int = 512
    epochs: int = 10
    patience: int = 2
    seed: int = 0
    # Training rows beyond this are left out (a seeded uniform sample is kept).
    max_train_rows: int = 2_000_000
    # The softmax loss normalises over the whole vocabulary up to this many tags; above, it
    # samples sampled_negatives uniform negatives per batch.
    full_softmax_max_tags: int = 20_000
    sampled_negatives: int = 1000
    # Tags kept per user in user_tag_scores.
    top_m: int = 50
    # user_tag_scores.interest = log p(t | u) - w log p(t | the average user): 0 ranks as the
    # score (tomorrow's clicks, popular tags first), 1 by the user's lift over everyone.
    # 0.5 was the best of 0.25, 0.5, 0.75, 1 at recovering the planted interests of the demo's
    # synthetic feed (seed 7); the test asserts it on another feed (seed 13).
    interest_popularity_weight: float = 0.5
    # Up to this many users (D's users snapshot), the driver, which has just trained the
    # model and holds TensorFlow, scores them with the function Spark's Python workers run;
    # above, the workers do, each importing TensorFlow and loading the model first (on the
    # demo's day 12 s of a new session's 15.5 s of scoring). 0: always the workers.
    driver_scoring_max_users: int = 20_000

    @property
    def input_fields(self) -> list[str]:
        """The model's multi-valued fields: the profile columns, then ``popular``."""
        return [*self.fields, *(["popular"] if self.popular_field else [])]

    def validate(self, where: str) -> None:
        _require(self.loss in TAG_MODEL_LOSSES, f"{where}.loss",
                 f"{self.loss!r} is not one of {', '.join(TAG_MODEL_LOSSES)}")
        _require(self.tower in TAG_MODEL_TOWERS, f"{where}.tower",
                 f"{self.tower!r} is not one of {', '.join(TAG_MODEL_TOWERS)}")
        _require(self.echo in TAG_MODEL_ECHOES, f"{where}.echo",
                 f"{self.echo!r} is not one of {', '.join(TAG_MODEL_ECHOES)}")
        _require(self.window_days >= 2, f"{where}.window_days", "must be >= 2 (one day validates)")
        for key in ("field_length", "article_tags", "embedding_dim", "heads", "user_dim", "batch_size",
                    "epochs", "max_train_rows", "full_softmax_max_tags", "sampled_negatives", "top_m"):
            _require(getattr(self, key) > 0, f"{where}.{key}", "must be > 0")
        _require(all(u > 0 for u in self.units), f"{where}.units", "layer sizes must be > 0")
        _require(self.learning_rate > 0, f"{where}.learning_rate", "must be > 0")
        _require(0.0 <= self.interest_popularity_weight <= 1.0, f"{where}.interest_popularity_weight",
                 "must be in [0, 1]")
        _require(self.patience >= 0, f"{where}.patience", "must be >= 0")
        _require(self.driver_scoring_max_users >= 0, f"{where}.driver_scoring_max_users", "must be >= 0")
        _require(len(set(self.fields)) == len(self.fields), f"{where}.fields", "must not repeat a column")


@dataclass(frozen=True)
class SparkConfig:
    # Used by the `tagrecall` command only; under spark-submit the submitter sets the master.
    master: str = "local[*]"
    shuffle_partitions: int = 8
    driver_memory: str = "4g"
    # The class-data-sharing archive a driver JVM started by the `tagrecall` command maps
    # (each start some 5-12 s shorter, bench/startup.py): "auto" (the one `tagrecall class-archive` builds in
    # the environment, used when it matches this Java and these Spark jars), "off", or a path.
    class_archive: str = "auto"
    conf: dict[str, str] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        _require(bool(self.master), f"{where}.master", "must not be empty")
        _require(self.shuffle_partitions > 0, f"{where}.shuffle_partitions", "must be > 0")
        _require(bool(self.class_archive), f"{where}.class_archive", 'must be "auto", "off" or a path')


@dataclass(frozen=True)
class Config:
    storage: StorageConfig = field(default_factory=StorageConfig)
    time: TimeConfig = field(default_factory=TimeConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    profiles: ProfilesConfig = field(default_factory=ProfilesConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tag_model: TagModelConfig = field(default_factory=TagModelConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    recall: RecallConfig = field(default_factory=RecallConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)

    def validate(self) -> Config:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate(f.name)
        profile_columns = [f"{h}_weight" for h in self.profiles.half_life_days] + ["impressions", "clicks"]
        unknown = [c for c in self.tag_model.fields if c not in profile_columns]
        _require(not unknown, "tag_model.fields",
                 f"{unknown} are not columns of user_tag_profile; known: {', '.join(profile_columns)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Every setting, as written into run reports (a password in the Redis URL redacted)."""
        data = dataclasses.asdict(self)
        data["publish"]["redis_url"] = redact_url(data["publish"]["redis_url"])
        return data

    def replace(self, **sections: Any) -> Config:
        return dataclasses.replace(self, **sections).validate()


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        _require(isinstance(value, dict), where, f"expected a table, got {type(value).__name__}")
        return {_coerce(k, key_type, f"{where}.{k}"): _coerce(v, value_type, f"{where}.{k}")
                for k, v in value.items()}
    if origin is list:
        (item_type,) = typing.get_args(hint)
        _require(isinstance(value, list), where, f"expected a list, got {type(value).__name__}")
        return [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        _require(ok, where, f"expected a number, got {value!r}")
        return float(value)
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        _require(ok, where, f"expected an integer, got {value!r}")
        return value
    if hint is str:
        _require(isinstance(value, str), where, f"expected a string, got {value!r}")
        return value
    if hint is bool:
        _require(isinstance(value, bool), where, f"expected true or false, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint} at {where}")


def _build_section(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    _require(not unknown, where, f"unknown key(s) {unknown}; known keys: {', '.join(sorted(known))}")
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()})


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    sections = {f.name: f for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - set(sections))
    _require(not unknown, source,
             f"unknown section(s) {unknown}; known sections: {', '.join(sorted(sections))}")
    hints = typing.get_type_hints(Config)
    built = {}
    for name, values in data.items():
        _require(isinstance(values, dict), f"{source}: [{name}]", "must be a table")
        built[name] = _build_section(hints[name], values, f"{source}: {name}")
    return Config(**built).validate()


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(assignment: str) -> tuple[list[str], Any]:
    """``"index.top_k=100"`` -> (["index", "top_k"], 100). The value is read as a TOML
    value when it parses as one, else as a bare string."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected section.key=value")
    dotted, raw_value = assignment.split("=", 1)
    path = dotted.strip().split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError(f"--set {assignment!r}: expected section.key=value")
    try:
        value = tomllib.loads(f"v = {raw_value}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw_value
    return path, value


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                assignments: list[str] | None = None) -> Config:
    """Defaults, then the TOML file at ``path``, then ``overrides`` ({"storage": {...}}),
    then ``assignments`` ("section.key=value")."""
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    data = _merge(data, overrides or {})
    for assignment in assignments or []:
        keys, value = parse_override(assignment)
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        data = _merge(data, nested)
    return config_from_dict(data, source)


def defaults_as_toml() -> str:
    """The built-in defaults written as a TOML file (``tagrecall config``)."""
    lines: list[str] = []
    for section, values in Config().to_dict().items():
        lines.append(f"[{section}]")
        tables = []
        for key, value in values.items():
            if isinstance(value, dict):
                tables.append((key, value))
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        for key, value in tables:
            inner = ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items())
            lines.append(f"{key} = {{ {inner} }}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
