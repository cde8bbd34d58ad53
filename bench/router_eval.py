"""`make bench-router`: routing quality on the held-out test split, and decision latency.

Prints intent, complexity and tier accuracy (standard and vip users) against the labels, the
confusion matrices and accuracy per language (services.router.evaluate, as `tiermesh route
--eval` does for a user's own file), and p50/p99 of an in-process decision. The gold tier is
what the policy gives for the labelled intent and complexity.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import time
from collections import Counter

from bench.stats import percentile
from services.router.evaluate import Labelled, evaluate, render
from services.router.policy import Router
from services.router.second_opinion import SecondOpinion
from services.router.train import DATA_DIR, SPLITS, load_rows


def timings(router: Router, texts: list[str], reps: int) -> list[list[float]]:
    """Each message's decision times over `reps` passes (the collector off: a decision's own cost)."""
    gc.disable()
    out: list[list[float]] = [[] for _ in texts]
    try:
        for _ in range(reps):
            for times, text in zip(out, texts, strict=True):
                start = time.perf_counter()
                router.decide(text)
                times.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return out


def pooled(per_message: list[list[float]]) -> list[float]:
    """Every message's times in one sorted list."""
    return sorted(t for times in per_message for t in times)


def timed(router: Router, texts: list[str], reps: int) -> list[float]:
    return pooled(timings(router, texts, reps))


def agreement() -> None:
    """How often a second labeller, labelling blind, gave a sample the same labels (and Cohen's
    kappa, agreement beyond chance) for intent and complexity."""
    path = DATA_DIR / "agreement" / "second_labeller.jsonl"
    if not path.exists():
        return
    first = {r["id"]: r for split in SPLITS for r in load_rows(split)}
    second = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    pairs = [(first[s["id"]], s) for s in second if s["id"] in first]
    print(f"\nlabel agreement with a second labeller, blind, on {len(pairs)} messages:")
    for key in ("intent", "complexity"):
        a = [f[key] for f, _ in pairs]
        b = [s[key] for _, s in pairs]
        observed = sum(x == y for x, y in zip(a, b, strict=True)) / len(pairs)
        ca, cb = Counter(a), Counter(b)
        chance = sum(ca[k] * cb[k] for k in ca) / len(pairs) ** 2
        kappa = (observed - chance) / (1 - chance) if chance < 1 else 1.0
        print(f"  {key:<11} agreement {observed:.3f}, Cohen's kappa {kappa:.3f}")


def slow_path(router: Router, texts: list[str]) -> list[float]:
    """What the second opinion adds to a decision where the fast path is unsure: embedding the
    opening and hearing the classifier (the service does this on a worker thread)."""
    out = []
    for text in texts:
        look = router.look(text)
        if not router.wants_second_opinion(look):
            continue
        assert router.second is not None
        start = time.perf_counter()
        router.conclude(look, vector=router.second.embed(text))
        out.append(time.perf_counter() - start)
    return sorted(out)


def main() -> None:
    second = SecondOpinion.load()
    router = Router.load(second=second)
    train_n = len(load_rows("train"))
    for split, title in (
        ("test", "the test split (held out from the training data's writers)"),
        ("independent", "the independent split (another writer, no template shared with training)"),
    ):
        rows = load_rows(split)
        if not rows:
            continue
        print(f"\nrouting evaluation on {title}: {len(rows)} messages (model trained on {train_n} others)")
        for segment in ("standard", "vip"):
            labelled = [Labelled(r["text"], r["intent"], r["complexity"], segment, lang=r["lang"]) for r in rows]
            report = evaluate(router, labelled)
            print(f"\n{segment} users, {split}:")
            print(render(report))
    agreement()
    rows = load_rows("test")
    texts = [r["text"] for r in rows]
    cores = os.sched_getaffinity(0)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(0, {max(cores)})  # one core: fewer migrations, steadier tails
    router = Router.load()  # the fast path alone: what every decision pays
    fresh = Router.load()  # a new process's first decisions: nothing memoized yet
    cold = timed(fresh, texts, 1)
    print(
        f"\ndecision latency in-process, first pass ({len(cold)} decisions, cold word cache): "
        f"p50 {percentile(cold, 50) * 1e6:.0f} µs, p99 {percentile(cold, 99) * 1e6:.0f} µs"
    )
    # A Router that has been running meets messages it has not seen: warmed on the train split,
    # it decides both test splits once (the figure the fast path's p99 budget is held to).
    timed(router, [r["text"] for r in load_rows("train")], 1)
    unseen = timed(router, texts + [r["text"] for r in load_rows("independent")], 1)
    print(
        f"decision latency in-process, warm Router, unseen messages ({len(unseen)} decisions): "
        f"p50 {percentile(unseen, 50) * 1e6:.0f} µs, p99 {percentile(unseen, 99) * 1e6:.0f} µs"
    )
    timed(router, texts, 1)  # the steady trials decide the test split again and again
    per_message = [timings(router, texts, 10) for _ in range(3)]
    trials = [pooled(trial) for trial in per_message]
    for i, times in enumerate(trials, 1):
        print(
            f"decision latency in-process, steady trial {i} ({len(times)} decisions): "
            f"p50 {percentile(times, 50) * 1e6:.0f} µs, p99 {percentile(times, 99) * 1e6:.0f} µs"
        )
    merged = sorted(t for times in trials for t in times)
    print(
        f"decision latency in-process, fast path, steady ({len(merged)} decisions): "
        f"p50 {percentile(merged, 50) * 1e6:.0f} µs, p99 {percentile(merged, 99) * 1e6:.0f} µs"
    )
    # What the model itself costs, apart from what the machine adds to a tail (a preemption, a
    # timer tick): each message's fastest of its 30 decisions.
    least = [min(t for trial in per_message for t in trial[i]) for i in range(len(texts))]
    slowest = max(range(len(texts)), key=least.__getitem__)
    print(
        f"decision cost in-process, each message's fastest of 30: p50 {percentile(least, 50) * 1e6:.0f} µs, "
        f"max {least[slowest] * 1e6:.0f} µs (a message of {len(texts[slowest])} characters)"
    )
    os.sched_setaffinity(0, cores)  # the embedding engine uses every core
    slow_router = Router.load(second=second)
    for split in ("test", "independent"):
        slow = slow_path(slow_router, [r["text"] for r in load_rows(split)])
        if slow:
            print(
                f"second opinion, {split} split: asked for {len(slow)} of {len(load_rows(split))} messages, "
                f"adds p50 {percentile(slow, 50) * 1e3:.1f} ms, p99 {percentile(slow, 99) * 1e3:.1f} ms"
            )


if __name__ == "__main__":
    main()
