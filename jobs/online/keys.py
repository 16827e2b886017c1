"""Where tagrecall's published data lives in Redis, and how to connect: what ``publish``
writes with and what the online recall (jobs/online/recall.py) reads with. redis-py only.

Key layout (``p`` = publish.key_prefix; a version is one publish of one day, ``D@<ms>``):

    p:current                  string: the version readers use
    p:previous                 string: the version kept back for --rollback
    p:versions                 set: every version with keys in Redis (complete or not)
    p:v:<version>:meta         hash: date, published_at, model_version, counts; written last
    p:v:<version>:user:<id>    sorted set: tag -> rank (1 = best) of user_top_tags
    p:v:<version>:tag:<tag>    sorted set: article_id -> tag_index score
    p:v:<version>:global       sorted set: tag -> rank, the list for users without tags
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from schemas.config import Config, ConfigError, redact_url


class RedisUnavailable(RuntimeError):
    """Redis cannot be reached or refused us; the message says where and what to do."""


@dataclass(frozen=True)
class Keys:
    prefix: str

    @property
    def current(self) -> str:
        return f"{self.prefix}:current"

    @property
    def previous(self) -> str:
        return f"{self.prefix}:previous"

    @property
    def versions(self) -> str:
        return f"{self.prefix}:versions"

    def version_pattern(self, version: str) -> str:
        return f"{self.prefix}:v:{version}:*"

    def meta(self, version: str) -> str:
        return f"{self.prefix}:v:{version}:meta"

    def user(self, version: str, user_id: str) -> str:
        return f"{self.prefix}:v:{version}:user:{user_id}"

    def tag(self, version: str, tag: str) -> str:
        return f"{self.prefix}:v:{version}:tag:{tag}"

    def global_tags(self, version: str) -> str:
        return f"{self.prefix}:v:{version}:global"


NOT_CONFIGURED = "Redis is not configured (publish.redis_url or TAGRECALL_REDIS_URL)"


def redis_url(config: Config) -> str:
    """publish.redis_url, else $TAGRECALL_REDIS_URL, else '' (publishing not configured)."""
    return config.publish.redis_url or os.environ.get("TAGRECALL_REDIS_URL", "")


@dataclass(frozen=True)
class Connection:
    """What a process needs to open a Redis client (picklable: Spark ships it to workers)."""

    url: str
    password: str | None
    tls: bool
    timeout: float

    def client(self):
        import redis

        kwargs = {"socket_timeout": self.timeout, "socket_connect_timeout": self.timeout,
                  "decode_responses": True}
        if self.password:
            kwargs["password"] = self.password
        if self.tls and self.url.startswith("redis://"):
            kwargs["ssl"] = True
        return redis.Redis.from_url(self.url, **kwargs)

    def __repr__(self) -> str:  # never the password
        return f"Connection({redact_url(self.url)!r}, tls={self.tls})"


def connection(config: Config) -> Connection:
    url = redis_url(config)
    if not url:
        raise ConfigError("Redis is not configured: set publish.redis_url (e.g. --set "
                          "publish.redis_url=redis://127.0.0.1:6379/0) or TAGRECALL_REDIS_URL")
    return Connection(url, os.environ.get(config.publish.password_env) or None, config.publish.tls,
                      config.publish.socket_timeout_sec)


def connect(config: Config):
    """A client that has answered PING, or RedisUnavailable naming the server (password redacted)."""
    import redis

    conn = connection(config)
    client = conn.client()
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise RedisUnavailable(f"Redis at {redact_url(conn.url)} refused the credentials ({exc}); set the "
                               f"password in ${config.publish.password_env} or in publish.redis_url") from None
    except redis.RedisError as exc:
        raise RedisUnavailable(f"cannot reach Redis at {redact_url(conn.url)}: {exc}. Start it, or point "
                               f"publish.redis_url / TAGRECALL_REDIS_URL at a running server") from None
    return client
