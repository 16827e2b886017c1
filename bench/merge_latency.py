"""The online merge's cost per user under each ``recall.merge``, against ``rank_sum`` (the
former merge), on lists of the index's size: paired and interleaved, so a noisy machine slows
both sides of a pair alike.

    python bench/merge_latency.py [--users 300] [--top-k 200] [--user-tags 20] [--k 100]

For two vocabularies (46 tags, KuaiRand's, and 200, the synthetic feed's), each user draws
--user-tags tags; each tag holds --top-k (article, score) pairs. Every user is merged by each
method three times, alternating, and keeps the fastest of each; the figures are the median
milliseconds and the median and 90th percentile of the per-user ratio to rank_sum. Redis's
round trips (the rest of ``recall()``) are not included: they are the same for every merge.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from record import append  # bench/ is on sys.path when a benchmark runs as a script

from jobs.online.recall import MERGES, merge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--user-tags", type=int, default=20)
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args()
    rng = random.Random(1)
    figures = {}
    for n_tags, n_articles in ((46, 7583), (200, 3000)):
        lists = {f"t{i}": [(f"a{rng.randrange(n_articles)}", rng.random()) for _ in range(args.top_k)]
                 for i in range(n_tags)}
        ms: dict[str, list[float]] = {m: [] for m in MERGES}
        for _ in range(args.users):
            tags = [(f"t{i}", r) for r, i in enumerate(rng.sample(range(n_tags), args.user_tags), 1)]
            best = dict.fromkeys(MERGES, float("inf"))
            for _ in range(3):
                for method in MERGES:
                    started = time.perf_counter()
                    merge(tags, lists, args.k, method)
                    best[method] = min(best[method], (time.perf_counter() - started) * 1000)
            for method in MERGES:
                ms[method].append(best[method])
        for method in MERGES:
            ratios = sorted(a / b for a, b in zip(ms[method], ms["rank_sum"], strict=True))
            median_ms, ratio = statistics.median(ms[method]), statistics.median(ratios)
            p90 = ratios[int(0.9 * (len(ratios) - 1))]
            print(f"{n_tags:>4} tags  {method:<12} median {median_ms:6.2f} ms per user   "
                  f"/ rank_sum: median {ratio:.2f}x, p90 {p90:.2f}x")
            figures[f"{method}_{n_tags}tags_ms"] = round(median_ms, 3)
            figures[f"{method}_{n_tags}tags_ratio"] = round(ratio, 3)
    append("merge_latency", {"users": args.users, "top_k": args.top_k, "user_tags": args.user_tags,
                                    "k": args.k}, figures)


if __name__ == "__main__":
    main()
