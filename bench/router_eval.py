"""`make bench-router`: routing quality on the held-out test split, and decision latency.

Prints intent, complexity and tier accuracy (standard and vip users) against the labels, the
confusion matrices, accuracy per language, and p50/p99 of an in-process decision. The gold tier
is what the policy gives for the labelled intent and complexity.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections import Counter

from bench.stats import percentile
from services.router.complexity import LEVELS
from services.router.intent import INTENTS
from services.router.policy import Router
from services.router.train import load_rows


def confusion(title: str, labels: tuple[str, ...], pairs: list[tuple[str, str]]) -> None:
    counts = Counter(pairs)
    width = max(len(label) for label in labels) + 1
    print(f"\n{title} (rows: label, columns: predicted)")
    print(" " * width + "".join(f"{label[:9]:>10}" for label in labels))
    for gold in labels:
        print(f"{gold:<{width}}" + "".join(f"{counts[(gold, pred)]:>10}" for pred in labels))


def timed(router: Router, texts: list[str], reps: int) -> list[float]:
    gc.disable()
    out = []
    try:
        for _ in range(reps):
            for text in texts:
                start = time.perf_counter()
                router.decide(text)
                out.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return sorted(out)


def main() -> None:
    router = Router.load()
    rows = load_rows("test")
    train_n = len(load_rows("train"))
    print(f"routing evaluation on the test split: {len(rows)} messages (model trained on {train_n} others)")
    intent_pairs, cx_pairs = [], []
    tier_hits = {"standard": 0, "vip": 0}
    by_lang: dict[str, list[int]] = {}
    for row in rows:
        d = router.decide(row["text"], "standard")
        intent_pairs.append((row["intent"], d.intent))
        cx_pairs.append((row["complexity"], d.complexity))
        for segment in tier_hits:
            predicted = router.decide(row["text"], segment).tier
            gold = router.policy.select(row["complexity"], row["intent"], segment).tier
            tier_hits[segment] += predicted == gold
        by_lang.setdefault(row["lang"], []).append(int(d.intent == row["intent"]))
    n = len(rows)
    intent_acc = sum(g == p for g, p in intent_pairs) / n
    cx_acc = sum(g == p for g, p in cx_pairs) / n
    print(f"  intent accuracy      {intent_acc:.3f}")
    print(f"  complexity accuracy  {cx_acc:.3f}")
    for segment, hits in tier_hits.items():
        print(f"  tier accuracy ({segment:<8}) {hits / n:.3f}")
    for lang, hits in sorted(by_lang.items()):
        print(f"  intent accuracy, {lang:<5} {sum(hits) / len(hits):.3f} ({len(hits)} messages)")
    confusion("intent", INTENTS, intent_pairs)
    confusion("complexity", LEVELS, cx_pairs)
    texts = [r["text"] for r in rows]
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})  # one core: fewer migrations, steadier tails
    fresh = Router.load()  # a new process's first decisions: nothing memoized yet
    cold = timed(fresh, texts, 1)
    print(
        f"\ndecision latency in-process, first pass ({len(cold)} decisions, cold word cache): "
        f"p50 {percentile(cold, 50) * 1e6:.0f} µs, p99 {percentile(cold, 99) * 1e6:.0f} µs"
    )
    trials = [timed(router, texts, 10) for _ in range(3)]
    for i, times in enumerate(trials, 1):
        print(
            f"decision latency in-process, steady trial {i} ({len(times)} decisions): "
            f"p50 {percentile(times, 50) * 1e6:.0f} µs, p99 {percentile(times, 99) * 1e6:.0f} µs"
        )
    merged = sorted(t for times in trials for t in times)
    print(
        f"decision latency in-process, steady ({len(merged)} decisions): "
        f"p50 {percentile(merged, 50) * 1e6:.0f} µs, p99 {percentile(merged, 99) * 1e6:.0f} µs"
    )


if __name__ == "__main__":
    main()
