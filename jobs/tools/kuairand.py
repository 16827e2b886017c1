"""`tagrecall import-kuairand`: the KuaiRand-Pure CSVs -> the raw landing format.

Every ``log_standard_*.csv`` in --src is read (the shared week ships one; the full release
``log_standard_4_08_to_4_21_pure.csv`` and ``log_standard_4_22_to_5_08_pure.csv``), and with
``random=True`` every ``log_random_*.csv`` too: videos the feed showed at random. Their rows
(``is_rand = 1``, whichever file holds them) carry ``request_id = "random"``, so a reader can
tell the unbiased impressions from the feed's own choices. Files whose dates overlap are
refused (two releases of the same days would count every row twice).

Choices (see README, "Real data"):
- Day boundaries are Asia/Shanghai midnights (the dataset's `date` column is local time in
  Shanghai); use ``jobs/conf/kuairand.toml``, which sets ``time.timezone`` accordingly.
- Each log row lands in the partition of its ``date`` column, the day the feed logged it;
  its event time is ``time_ms``. The two disagree on ~1% of rows (up to ~1.2 h before the
  day starts), which ingest's late-data tolerance accepts as late events.
- Every log row is an ``impression``. ``is_click = 1`` adds a ``click`` whose dwell is
  ``play_time_ms`` (watch time after the play started). Autoplay gives non-clicked rows a
  play time too; that is not dwell after a click and is not carried.
- ``is_like`` -> ``like``, ``is_comment`` -> ``comment``, ``is_forward`` -> ``share``,
  ``is_follow`` -> ``favorite`` (following the author is the strongest commitment the feed
  records; the contract has no author events). ``is_hate`` and ``long_view`` have no
  event type in the contract and are not imported.
- No positions or request ids exist in this dataset: both are null, except the
  request_id "random" of randomly exposed videos.
- Event ids number the rows of the standard files in file-name order ("kr<n>-<type>"),
  then those of the random files ("krr<n>-<type>"): the same files give the same ids.
- Videos become articles: tags split on ",", equal weights 1/n; publish time is the
  Shanghai midnight of ``upload_dt``; they land on the first log day, or on their upload
  day if later. Users land on the first log day with every column but user_id as a
  string feature.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

TIMEZONE = "Asia/Shanghai"
LOG_FILE = "log_standard_4_25_to_5_01_pure.csv"  # the shared week
STANDARD_LOGS = "log_standard_*.csv"
RANDOM_LOGS = "log_random_*.csv"
RANDOM_REQUEST = "random"
USER_FILE = "user_features_pure.csv"
VIDEO_FILE = "video_features_basic_pure.csv"
FLAG_EVENTS = {"is_like": "like", "is_comment": "comment", "is_forward": "share", "is_follow": "favorite"}


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path.name} not found in {path.parent}: --src must be the folder "
                                "holding the KuaiRand-Pure CSV files (e.g. ../shared/data/kuairand-pure)")
    return path


def _write_jsonl(frame: pd.DataFrame, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_json(folder / name, orient="records", lines=True)


def _midnight_ms(dates: pd.Series) -> pd.Series:
    local = pd.to_datetime(dates).dt.tz_localize(TIMEZONE)
    return (local.dt.tz_convert("UTC").astype("int64") // 1_000_000).astype("int64")


def log_files(src: Path, random: bool) -> tuple[list[Path], list[Path]]:
    """(standard, random) log files of --src, each sorted by name; refuses none found."""
    standard = sorted(src.glob(STANDARD_LOGS))
    if not standard:
        raise FileNotFoundError(f"no {STANDARD_LOGS} in {src}: --src must be the folder holding the "
                                "KuaiRand-Pure CSV files (e.g. ../shared/data/kuairand-pure)")
    randoms = sorted(src.glob(RANDOM_LOGS)) if random else []
    if random and not randoms:
        raise FileNotFoundError(f"--random was given but {src} holds no {RANDOM_LOGS}; the full KuaiRand-Pure "
                                "release ships log_random_4_22_to_5_08_pure.csv")
    return standard, randoms


def read_logs(files: list[Path]) -> pd.DataFrame:
    """The files' rows in file order, refusing files whose dates overlap."""
    frames, spans = [], []
    for path in files:
        frame = pd.read_csv(path)
        if len(frame):
            spans.append((int(frame["date"].min()), int(frame["date"].max()), path.name))
        log.info("read %s: %d log rows", path.name, len(frame))
        frames.append(frame)
    spans.sort()
    for (_, end, name), (start, _, other) in itertools.pairwise(spans):
        if start <= end:
            raise ValueError(f"{name} (dates up to {end}) and {other} (dates from {start}) overlap: two releases "
                             "of the same days would count every row twice; keep one of them in --src")
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def log_to_events(log_rows: pd.DataFrame, id_prefix: str = "kr") -> pd.DataFrame:
    """One impression per row, plus click/like/comment/share/favorite where flagged."""
    row = id_prefix + pd.Series(np.arange(len(log_rows)), index=log_rows.index).astype(str)
    random = log_rows["is_rand"] == 1 if "is_rand" in log_rows else pd.Series(False, index=log_rows.index)
    base = pd.DataFrame({
        "user_id": log_rows["user_id"].astype(str),
        "article_id": log_rows["video_id"].astype(str),
        "event_time": log_rows["time_ms"].astype("int64"),
        "position": pd.array([None] * len(log_rows), dtype="Int64"),
        "request_id": random.map({True: RANDOM_REQUEST, False: None}),
        "dt": pd.to_datetime(log_rows["date"].astype(str), format="%Y%m%d").dt.strftime("%Y-%m-%d"),
    })
    frames = [base.assign(event_id=row + "-impression", event_type="impression",
                          dwell_ms=pd.array([None] * len(base), dtype="Int64"))]
    clicked = log_rows["is_click"] == 1
    frames.append(base[clicked].assign(event_id=row[clicked] + "-click", event_type="click",
                                       dwell_ms=pd.array(log_rows.loc[clicked, "play_time_ms"], dtype="Int64")))
    for flag, event_type in FLAG_EVENTS.items():
        hit = log_rows[flag] == 1
        frames.append(base[hit].assign(event_id=row[hit] + "-" + event_type, event_type=event_type,
                                       dwell_ms=pd.array([None] * int(hit.sum()), dtype="Int64")))
    cols = ["event_id", "user_id", "article_id", "event_type", "event_time", "dwell_ms", "position",
            "request_id", "dt"]
    return pd.concat(frames, ignore_index=True)[cols]


def videos_to_articles(videos: pd.DataFrame, first_day: str) -> pd.DataFrame:
    def tags(text) -> list[dict]:
        if not isinstance(text, str) or not text.strip():
            return []
        names = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
        return [{"tag": n, "weight": 1.0 / len(names)} for n in names]

    publish = _midnight_ms(videos["upload_dt"])
    upload_day = pd.to_datetime(videos["upload_dt"]).dt.strftime("%Y-%m-%d")
    return pd.DataFrame({
        "article_id": videos["video_id"].astype(str),
        "publish_time": publish, "updated_time": publish,
        "tags": videos["tag"].map(tags),
        "dt": upload_day.where(upload_day > first_day, first_day),
    })


def users_to_users(users: pd.DataFrame, first_day: str) -> pd.DataFrame:
    feature_cols = [c for c in users.columns if c != "user_id"]
    features = users[feature_cols].astype(str).to_dict(orient="records")
    return pd.DataFrame({
        "user_id": users["user_id"].astype(str),
        "features": features,
        "updated_time": int(_midnight_ms(pd.Series([first_day])).iloc[0]),
    })


def import_kuairand(src: str | Path, raw: str | Path, random: bool = False) -> dict:
    src, raw = Path(src), Path(raw)
    standard, randoms = log_files(src, random)
    videos = pd.read_csv(_require(src / VIDEO_FILE))
    users = pd.read_csv(_require(src / USER_FILE))
    log_rows = read_logs(standard)
    events = log_to_events(log_rows)
    random_rows = 0
    if randoms:
        random_log = read_logs(randoms)
        random_rows = len(random_log)
        events = pd.concat([events, log_to_events(random_log, "krr")], ignore_index=True)
    first_day = events["dt"].min()
    articles = videos_to_articles(videos, first_day)
    summary: dict = {"source": str(src.resolve()), "raw": str(raw.resolve()), "timezone": TIMEZONE,
                     "files": [p.name for p in standard + randoms], "log_rows": len(log_rows),
                     "random_log_rows": random_rows, "events": {}, "event_types": {},
                     "random_impressions": int((events["request_id"] == RANDOM_REQUEST).sum())}
    for day, frame in events.groupby("dt", sort=True):
        _write_jsonl(frame.drop(columns="dt"), raw / "events" / f"dt={day}", "part-00000.jsonl")
        summary["events"][day] = len(frame)
    summary["event_types"] = events["event_type"].value_counts().to_dict()
    for day, frame in articles.groupby("dt", sort=True):
        _write_jsonl(frame.drop(columns="dt"), raw / "articles" / f"dt={day}", "part-00000.jsonl")
    _write_jsonl(users_to_users(users, first_day), raw / "users" / f"dt={first_day}", "part-00000.jsonl")
    # The landing of each log day needs an articles and users partition, even when empty.
    for day in summary["events"]:
        for source in ("articles", "users"):
            folder = raw / source / f"dt={day}"
            if not folder.exists():
                folder.mkdir(parents=True)
                (folder / "part-00000.jsonl").write_text("")
    summary["articles"], summary["users"] = len(articles), len(users)
    summary["dates"] = f"{first_day}..{events['dt'].max()}"
    log.info("imported KuaiRand-Pure: %d log rows (%d random) -> %d events over %s",
             len(log_rows) + random_rows, random_rows, len(events), summary["dates"])
    return summary
