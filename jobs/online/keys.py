"""Where tagrecall's published data lives in Redis, and how to connect: what ``publish``
writes with and what the online recall (jobs/online/recall.py) reads with. redis-py only.

Key layout (``p`` = publish.key_prefix; a version is one publish of one day, ``D@<ms>``):

    p:current                  string: the version readers use
    p:lock                     string: the token of the publish writing now (one at a time)
    p:previous                 string: the version kept back for --rollback
    p:versions                 set: every version with keys in Redis (complete or not)
    p:v:<version>:meta         hash: date, published_at, model_version, merge, counts; written last
    p:v:<version>:user:<id>    sorted set: tag -> rank (1 = best) of user_top_tags
    p:v:<version>:tag:<tag>    sorted set: article_id -> tag_index score
    p:v:<version>:global       sorted set: tag -> rank, the list for users without tags
    p:v:<version>:sums         hash: tag -> math.fsum of its articles' scores (the probability
                               merge's denominators; versions published before it lack it)

The online recall's merge runs in Redis as the function of jobs/online/redis_merge.py,
which an administrator loads (``tagrecall redis-acl --apply``: FUNCTION LOAD REPLACE,
library ``tagrecall_v<N>``) and ``publish`` only checks for.

A user id or a tag in a key is percent-encoded (:func:`escape`): every character but
letters, digits and ``-._~@`` becomes ``%XX`` of its UTF-8 bytes, ``%`` included, so ids
with ``:``, spaces, newlines, glob characters or non-ASCII text give one key each, inside
their own kind, and never match another key's pattern. Members (tags of a user, article
ids of a tag) are stored as they are.

Access: ``publish`` connects as the writer, the online recall as the reader
(:func:`connection`). :func:`acl_rules` gives each its least privilege under the prefix:
the writer the commands publish and rollback send, on ``p:*`` keys only, and FCALL_RO (the
probe of the recall's library: read-only, and every command a function sends is checked
against the caller's rules); the reader read-only commands on ``p:*`` keys, read-only
(``%R~``) even if a command were added, and FCALL_RO (the recall's function, whose commands
Redis checks against the reader's rules as if the reader sent them: GET, HGETALL, HMGET,
ZRANGE, ZUNION, ZMSCORE, ZCARD). Neither may run a command without a key scope that reaches
past the prefix: FUNCTION LOAD (which could replace another application's library, and
write through it) is the administrator's, run by ``tagrecall redis-acl --apply``.
``tagrecall redis-acl`` prints them as ACL-file lines or applies them.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from dataclasses import dataclass

from schemas.config import Config, ConfigError, redact_url


class RedisUnavailable(RuntimeError):
    """Redis cannot be reached or refused us; the message says where and what to do."""


def escape(part: str) -> str:
    """``part`` as one key segment: percent-encoded but for letters, digits and ``-._~@``."""
    return urllib.parse.quote(part, safe="@")


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

    @property
    def lock(self) -> str:
        return f"{self.prefix}:lock"

    def version_pattern(self, version: str, kind: str = "") -> str:
        """Every key of ``version``, or with ``kind`` (user, tag) its keys of that kind."""
        return f"{self.prefix}:v:{version}:{kind + ':' if kind else ''}*"

    def meta(self, version: str) -> str:
        return f"{self.prefix}:v:{version}:meta"

    def user(self, version: str, user_id: str) -> str:
        return f"{self.prefix}:v:{version}:user:{escape(user_id)}"

    def tag(self, version: str, tag: str) -> str:
        return f"{self.prefix}:v:{version}:tag:{escape(tag)}"

    def global_tags(self, version: str) -> str:
        return f"{self.prefix}:v:{version}:global"

    def sums(self, version: str) -> str:
        return f"{self.prefix}:v:{version}:sums"


NOT_CONFIGURED = "Redis is not configured (publish.redis_url or TAGRECALL_REDIS_URL)"


def redis_url(config: Config) -> str:
    """publish.redis_url, else $TAGRECALL_REDIS_URL, else '' (publishing not configured)."""
    return config.publish.redis_url or os.environ.get("TAGRECALL_REDIS_URL", "")


ROLES = ("writer", "reader")
# What publish (writing, switching, deleting, rolling back) and the recall send; SELECT for
# a database other than 0. SCAN lists key names of the whole database: Redis does not
# filter it by the key pattern.
COMMANDS = {
    "writer": ("ping", "select", "get", "set", "exists", "sadd", "srem", "smembers", "zadd", "zcard", "hset",
               "del", "unlink", "scan", "watch", "unwatch", "multi", "exec", "discard", "hlen", "fcall_ro"),
    "reader": ("ping", "select", "get", "exists", "hgetall", "zrange", "multi", "exec", "discard", "fcall_ro",
               "hmget", "zunion", "zmscore", "zcard"),
}


def acl_rules(prefix: str, role: str) -> list[str]:
    """ACL SETUSER rules (without the password) for ``role`` under ``prefix``."""
    if role not in ROLES:
        raise ValueError(f"unknown Redis role {role!r}; known: {', '.join(ROLES)}")
    keys = f"~{prefix}:*" if role == "writer" else f"%R~{prefix}:*"
    return ["reset", "on", keys, "resetchannels", "-@all", *(f"+{c}" for c in COMMANDS[role])]


def acl_file_line(prefix: str, role: str, user: str, password: str) -> str:
    """``role``'s line of a Redis ACL file (the password as its SHA-256, never in clear)."""
    return " ".join(["user", user, *acl_rules(prefix, role), "#" + hashlib.sha256(password.encode()).hexdigest()])


def apply_acl(client, prefix: str, users: dict[str, tuple[str, str]]) -> None:
    """ACL SETUSER for each role in ``users`` ({role: (user, password)}), on a client
    allowed to run ACL commands (an administrator's)."""
    for role, (user, password) in users.items():
        client.execute_command("ACL", "SETUSER", user, *acl_rules(prefix, role), f">{password}")


@dataclass(frozen=True)
class Connection:
    """What a process needs to open a Redis client (picklable: Spark ships it to workers)."""

    url: str
    password: str | None
    tls: bool
    timeout: float
    username: str | None = None
    ca_file: str | None = None

    def client(self):
        import redis

        kwargs = {"socket_timeout": self.timeout, "socket_connect_timeout": self.timeout,
                  "decode_responses": True}
        if self.username:
            kwargs["username"] = self.username
        if self.password:
            kwargs["password"] = self.password
        if self.tls and self.url.startswith("redis://"):
            kwargs["ssl"] = True
        if self.ca_file and (self.tls or self.url.startswith("rediss://")):
            kwargs["ssl_ca_certs"] = self.ca_file
        return redis.Redis.from_url(self.url, **kwargs)

    def __repr__(self) -> str:  # never the password
        return f"Connection({redact_url(self.url)!r}, user={self.username!r}, tls={self.tls})"


def connection(config: Config, role: str = "writer") -> Connection:
    """The writer's connection (publish), or the reader's (the online recall): the reader's
    user and password come from the variables named by publish.reader_username_env and
    publish.reader_password_env, and default to the writer's when the user is not set."""
    if role not in ROLES:
        raise ValueError(f"unknown Redis role {role!r}; known: {', '.join(ROLES)}")
    url = redis_url(config)
    if not url:
        raise ConfigError("Redis is not configured: set publish.redis_url (e.g. --set "
                          "publish.redis_url=redis://127.0.0.1:6379/0) or TAGRECALL_REDIS_URL")
    pub = config.publish
    user, password = os.environ.get(pub.username_env) or None, os.environ.get(pub.password_env) or None
    if role == "reader" and os.environ.get(pub.reader_username_env):
        user, password = os.environ[pub.reader_username_env], os.environ.get(pub.reader_password_env) or None
    return Connection(url, password, pub.tls, pub.socket_timeout_sec, user, pub.tls_ca_file or None)


def connect(config: Config, role: str = "writer"):
    """A client of ``role`` that has answered PING, or RedisUnavailable naming the server
    (password redacted)."""
    import redis

    conn = connection(config, role)
    client = conn.client()
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        names = ((config.publish.reader_username_env, config.publish.reader_password_env) if role == "reader"
                 else (config.publish.username_env, config.publish.password_env))
        raise RedisUnavailable(f"Redis at {redact_url(conn.url)} refused the {role}'s credentials ({exc}); set "
                               f"the user in ${names[0]} and the password in ${names[1]} (or in "
                               "publish.redis_url)") from None
    except redis.RedisError as exc:
        raise RedisUnavailable(f"cannot reach Redis at {redact_url(conn.url)}: {exc}. Start it, or point "
                               f"publish.redis_url / TAGRECALL_REDIS_URL at a running server") from None
    return client
