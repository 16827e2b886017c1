"""Online recall under load: latency and requests/s of ``recall()`` (the merge in Redis) and of
the former path (the lists read into Python and merged there), beside redis-benchmark's GET
on the same server, and what a publish switching versions does to the readers.

    python bench/recall.py [--sizes 2k,1m] [--clients 1,4,16] [--seconds 5] [--k 100]
                           [--switches 6] [--url redis://...]

Starts its own redis-server on a loopback port (or uses --url; the database is flushed, so
never point it at a server in use). For each size (users; 20 tags each, ranks 1-20, out of
the synthetic feed's 200 tags of 200 articles each, from 3,000 articles at the demo's 2,000
users and 30,000 at a million) one day is published by the publish step's own code
(jobs.publish: the lock, the partition writer, the count checks, the meta, the switch; the
recall's library is loaded first as the administrator, as ``tagrecall redis-acl --apply`` does), with its Spark DataFrames replaced by the same rows held
in memory: the lists are drawn here (seeded), not computed by the daily chain, whose demo
publishes lists of these sizes. The merge is the configured one (recall.merge). Then, for
each path and number of clients (separate processes: the GIL), every client recalls random
users (1 in 100 unknown: the global list) for --seconds (the redis path stops the benchmark
if an answer was merged in Python, so its figures are the function's); the figures are p50/p95/p99 of all
requests and requests/s over the wall time.

Switch: at the first size, 4 clients recall through each path while another process
publishes --switches new versions (alternately two days with different tags and articles);
each answer is checked against its own version (tags of the user in that version, articles of
that version only): errors and mixed answers are counted, latency reported as above.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import random
import shutil
import statistics
import subprocess
import time

from local_redis import start_redis
from record import append, size_label  # bench/ is on sys.path when a benchmark runs as a script
from sizes import parse_size

from jobs import publish
from jobs.online import recall as online
from jobs.online import redis_merge
from jobs.online.keys import Keys, connection
from schemas.config import load_config

N_TAGS, TOP_K, USER_TAGS = 200, 200, 20
PREFIX = "tagrecall"
DAYS = {"A": "2026-09-01", "B": "2026-09-02"}


def _articles_for(users: int) -> int:
    return 3000 if users <= 10_000 else 30_000


def user_tags(family: str, i: int) -> list[str]:
    rng = random.Random(f"{family}:{i}")
    return [f"t{j:03d}" for j in rng.sample(range(N_TAGS), USER_TAGS)]


def tag_rows(family: str, n_articles: int):
    rng = random.Random(f"{family}:tags")
    for j in range(N_TAGS):
        yield {"key": f"t{j:03d}",
               "items": [(f"{family}{a:06d}", rng.random() ** 2) for a in rng.sample(range(n_articles), TOP_K)]}


def user_rows(family: str, users: int):
    for i in range(users):
        yield {"key": f"u{i:07d}", "items": [(t, float(r)) for r, t in enumerate(user_tags(family, i), 1)]}


class _Rows:
    """What publish's writer needs of a DataFrame: foreachPartition, here one partition."""

    def __init__(self, make):
        self.make = make

    def foreachPartition(self, write):  # noqa: N802 (Spark's name)
        write(self.make())


class _Accumulator:
    def __init__(self, value=0):
        self.value = value

    def add(self, n):
        self.value += n


class _Spark:
    class sparkContext:  # noqa: N801 (Spark's name)
        accumulator = _Accumulator


def publish_day(config, family: str, users: int) -> dict:
    """jobs.publish.publish_version's steps on in-memory rows: lock, library, write, check, switch."""
    conn, keys = connection(config), Keys(PREFIX)
    client = conn.client()
    n_articles = _articles_for(users)
    expected = {"users": users, "tags": N_TAGS, "user_members": users * USER_TAGS, "tag_members": N_TAGS * TOP_K}
    fallback = [f"t{j:03d}" for j in range(USER_TAGS)]
    lock = publish.PublishLock(client, keys, f"bench publish {family}")
    lock.acquire(publish.LOCK_WAIT_SEC)
    try:
        redis_merge.load_library(client)  # the administrator's step (tagrecall redis-acl --apply)
        missing = redis_merge.library_status(client)
        if missing:
            raise RuntimeError(f"bench: {missing}")
        sets = (_Rows(lambda: user_rows(family, users)), _Rows(lambda: tag_rows(family, n_articles)), fallback)
        return publish._write_and_switch(_Spark, client, conn, keys, lock, DAYS[family], sets, expected, "bench",
                                         config.publish.pipeline_size, config.recall.merge)
    finally:
        lock.release()
        client.close()


def _client(job: dict) -> dict:
    """One client process: recall random users until job['until'], checking answers if asked."""
    url, path, users, k, check = job["url"], job["path"], job["users"], job["k"], job["check"]
    config = load_config(overrides={"publish": {"redis_url": url}})
    client = connection(config, "reader").client()
    call = online.recall if path == "redis" else online.recall_python
    rng = random.Random(job["seed"])
    lat, errors, mixed, by_day = [], 0, 0, {}
    while time.time() < job["start"]:
        time.sleep(0.001)
    while time.time() < job["until"] or (_STOP is not None and not _STOP.is_set()):
        i = rng.randrange(users)
        user = f"u{i:07d}" if rng.random() >= 0.01 else f"unknown-{i}"
        t0 = time.perf_counter()
        try:
            got = call(client, user, k, PREFIX)
        except Exception:  # noqa: BLE001 (every failure counts as an error of the reader)
            errors += 1
            continue
        lat.append((time.perf_counter() - t0) * 1000)
        if got.merged_in != path:
            raise RuntimeError(f"bench: the {path} path's answer for {user} was merged in {got.merged_in}: "
                               f"its figures would not be the {path} path's")
        if check:
            family = next(f for f, d in DAYS.items() if d == got.date)
            by_day[got.date] = by_day.get(got.date, 0) + 1
            tags = user_tags(family, i) if got.source == "user" else [f"t{j:03d}" for j in range(USER_TAGS)]
            if [t for t, _ in got.tags] != tags or any(not a.startswith(family) for a, _, _ in got.articles):
                mixed += 1
    return {"lat": lat, "errors": errors, "mixed": mixed, "by_day": by_day, "elapsed": time.time() - job["start"]}


_STOP = None  # set in each client by the pool's initializer: the switch phase's end


def _init_client(stop) -> None:
    global _STOP
    _STOP = stop


def run_load(url: str, path: str, clients: int, users: int, seconds: float, k: int, check: bool = False,
             during=None) -> dict:
    start = time.time() + 1.0
    jobs = [{"url": url, "path": path, "users": users, "k": k, "check": check, "seed": c, "start": start,
             "until": start + seconds} for c in range(clients)]
    ctx = mp.get_context("fork")
    stop = ctx.Event() if during else None
    with ctx.Pool(clients, initializer=_init_client, initargs=(stop,)) as pool:
        pending = pool.map_async(_client, jobs)
        extra = during(start) if during else None
        if stop is not None:
            time.sleep(0.5)  # a little load after the last switch
            stop.set()
        results = pending.get()
    wall = max(r["elapsed"] for r in results)
    lat = sorted(x for r in results for x in r["lat"])

    def q(p: float) -> float:
        return round(lat[min(len(lat) - 1, math.ceil(p * len(lat)) - 1)], 3) if lat else float("nan")

    by_day: dict[str, int] = {}
    for r in results:
        for d, n in r["by_day"].items():
            by_day[d] = by_day.get(d, 0) + n
    return {"p50": q(0.50), "p95": q(0.95), "p99": q(0.99), "max": round(lat[-1], 3) if lat else float("nan"),
            "rps": round(len(lat) / wall),
            "n": len(lat), "errors": sum(r["errors"] for r in results),
            "mixed": sum(r["mixed"] for r in results), "by_day": by_day, "extra": extra}


def redis_benchmark_get(port: int, clients: int) -> dict:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return {}
    out = subprocess.run([binary, "-h", "127.0.0.1", "-p", str(port), "-t", "get", "-n", "100000", "-c",
                          str(clients), "--csv"], capture_output=True, text=True, check=True).stdout
    head, row = [line.replace('"', "").split(",") for line in out.strip().splitlines()[-2:]]
    got = dict(zip(head, row, strict=True))
    return {"rps": round(float(got["rps"])), "p50": float(got["p50_latency_ms"]), "p99": float(got["p99_latency_ms"])}


def _used_memory(client) -> str:
    return client.info("memory")["used_memory_human"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="2k,1m", help="users of each published day (the first: the switch)")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=5.0, help="per path and number of clients")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--switches", type=int, default=6, help="publishes during the switch phase (0: none)")
    ap.add_argument("--paths", default="python,redis")
    ap.add_argument("--url", default=None)
    args = ap.parse_args()
    proc, url = None, args.url
    if url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
    else:
        proc, port = start_redis()
        url = f"redis://127.0.0.1:{port}/0"
    config = load_config(overrides={"publish": {"redis_url": url}})
    admin = connection(config).client()
    clients = [int(c) for c in args.clients.split(",")]
    paths = args.paths.split(",")
    try:
        for n, size in enumerate(args.sizes.split(",")):
            users = parse_size(size)
            admin.flushdb()
            t0 = time.monotonic()
            report = publish_day(config, "A", users)
            print(f"\n{users:,} users x {USER_TAGS} tags, {N_TAGS} tags x {TOP_K} articles of "
                  f"{_articles_for(users):,}: published {report['version']} in {time.monotonic() - t0:.0f} s "
                  f"({report['members_per_sec']:,} members/s), Redis uses {_used_memory(admin)}; "
                  f"merge {config.recall.merge}, k {args.k}", flush=True)
            print(f"{'path':<8}{'clients':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'req/s':>9}{'errors':>8}")
            figures: dict[str, float] = {}
            for c in clients:
                get = redis_benchmark_get(port, c)
                if get:
                    print(f"{'GET':<8}{c:>8}{get['p50']:>9.3f}{'':>9}{get['p99']:>9.3f}{get['rps']:>9,}"
                          f"{'':>8}  (redis-benchmark)", flush=True)
                    figures[f"get_c{c}_rps"] = get["rps"]
                for path in paths:
                    r = run_load(url, path, c, users, args.seconds, args.k)
                    print(f"{path:<8}{c:>8}{r['p50']:>9.3f}{r['p95']:>9.3f}{r['p99']:>9.3f}{r['rps']:>9,}"
                          f"{r['errors']:>8}", flush=True)
                    for q in ("p50", "p95", "p99"):
                        figures[f"{path}_c{c}_{q}_ms"] = r[q]
                    figures[f"{path}_c{c}_rps"] = r["rps"]
                    figures[f"{path}_c{c}_errors"] = r["errors"]
            if n == 0 and args.switches:
                switch_figures = switch_phase(config, url, users, args, paths)
                figures.update(switch_figures)
            append("recall", {"users": size_label(users), "user_tags": USER_TAGS, "tags": N_TAGS,
                              "articles_per_tag": TOP_K, "k": args.k, "merge": config.recall.merge,
                              "seconds": args.seconds}, figures,
                   "published by publish's code on rows drawn by the benchmark; clients are processes")
    finally:
        admin.flushdb()
        admin.close()
        if proc:
            proc.terminate()


def switch_phase(config, url: str, users: int, args, paths: list[str]) -> dict:
    """4 clients per path, checking every answer, while --switches publishes alternate A and B."""
    figures = {}
    print(f"\nswitch: 4 clients, {args.switches} publishes of {users:,} users during the load "
          "(every answer checked against its version)")
    print(f"{'path':<8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'req/s':>9}{'errors':>8}{'mixed':>7}  answers by day")

    for path in paths:
        def publisher(start: float) -> list[float]:
            while time.time() < start:
                time.sleep(0.01)
            took = []
            for s in range(args.switches):
                t0 = time.monotonic()
                publish_day(config, "B" if s % 2 == 0 else "A", users)
                took.append(time.monotonic() - t0)
            return took

        # The publishes run in this process while the clients run, which stop half a second
        # after the last switch.
        publish_day(config, "A", users)
        r = run_load(url, path, 4, users, 0.0, args.k, check=True, during=publisher)
        print(f"{path:<8}{r['p50']:>9.3f}{r['p99']:>9.3f}{r['max']:>9.3f}{r['rps']:>9,}{r['errors']:>8}{r['mixed']:>7}  "
              f"{r['by_day']}; publishes took {statistics.median(r['extra']):.2f} s each (median)", flush=True)
        figures.update({f"switch_{path}_p50_ms": r["p50"], f"switch_{path}_p99_ms": r["p99"],
                        f"switch_{path}_max_ms": r["max"],
                        f"switch_{path}_rps": r["rps"], f"switch_{path}_errors": r["errors"],
                        f"switch_{path}_mixed": r["mixed"], "switches": args.switches,
                        f"switch_{path}_days_seen": len(r["by_day"])})
    return figures


if __name__ == "__main__":
    main()
