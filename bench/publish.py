"""Publishing throughput: sorted-set members per second into Redis through the publish
step's pipelined writer, against the same members written one command at a time.

    python bench/publish.py [--users 100k] [--tags 20] [--single 100k] [--repeat 3] [--url redis://...]

Starts its own redis-server on a loopback port (or uses --url / $TAGRECALL_REDIS_URL; the
database is flushed, so never point it at a server in use). --users users with --tags
tags each are written by jobs.publish's partition writer (one ZADD per user, every
publish.pipeline_size commands one round trip: what each Spark task does), and the first
--single members again one ZADD of one member per round trip; runs alternate, --repeat
times each. Prints the median members/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from local_redis import start_redis
from record import append  # bench/ is on sys.path when a benchmark runs as a script
from sizes import parse_size

from jobs import publish
from jobs.online.keys import Keys, connection
from schemas.config import load_config


class _Counter:
    def __init__(self):
        self.value = 0

    def add(self, n):
        self.value += n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", default="100k")
    ap.add_argument("--tags", type=int, default=20)
    ap.add_argument("--single", default="100k", help="members written one command at a time")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--url", default=os.environ.get("TAGRECALL_REDIS_URL"))
    args = ap.parse_args()
    proc = None
    url = args.url
    if not url:
        proc, port = start_redis()
        url = f"redis://127.0.0.1:{port}/0"
    config = load_config(overrides={"publish": {"redis_url": url}})
    conn = connection(config)
    client = conn.client()
    client.ping()
    keys = Keys("bench")
    users, tags, single = parse_size(args.users), args.tags, parse_size(args.single)
    rows = [{"key": f"u{u:08d}", "items": [(f"t{t:03d}", float(t + 1)) for t in range(tags)]} for u in range(users)]
    flat = [(r["key"], m, s) for r in rows for m, s in r["items"]][:single]
    piped, one = [], []
    try:
        for run in range(args.repeat):
            client.flushdb()
            written, members = _Counter(), _Counter()
            t0 = time.perf_counter()
            publish._writer(conn, keys, f"p{run}", "user", config.publish.pipeline_size, written, members)(iter(rows))
            sec = time.perf_counter() - t0
            assert members.value == users * tags, (members.value, users * tags)
            piped.append(members.value / sec)
            client.flushdb()
            t0 = time.perf_counter()
            for key, member, score in flat:
                client.zadd(keys.user(f"s{run}", key), {member: score})
            one.append(len(flat) / (time.perf_counter() - t0))
            print(f"run {run + 1}: pipelined {piped[-1]:,.0f} members/s ({users * tags:,} members), "
                  f"one command each {one[-1]:,.0f} members/s ({len(flat):,} members)", flush=True)
    finally:
        client.flushdb()
        if proc:
            proc.terminate()
    p, o = statistics.median(piped), statistics.median(one)
    print(f"\nmedian of {args.repeat}: pipelined writer {p:,.0f} members/s, one command per member {o:,.0f} "
          f"members/s: ratio {p / o:.1f}x (pipeline_size {config.publish.pipeline_size}, {tags} tags per ZADD)")
    append("publish", {"users": args.users, "tags": tags, "single": args.single, "repeat": args.repeat},
           {"pipelined_members_per_s": round(p), "single_members_per_s": round(o), "ratio": round(p / o, 1)})


if __name__ == "__main__":
    main()
