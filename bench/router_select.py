"""How the second opinion's settings were chosen: 5-fold cross-validation on the train split.

`python -m bench.router_select [--model M] [--tokens 6,9,12,16,24,40] [--l2 ...] [--epochs ...]`
refits both fast models and both second-opinion heads on four fifths of the train split, decides
the fifth, and prints tier, intent and complexity accuracy (standard users) and the slow path's
share for each opening length (USE: words; `--model multilingual-e5-small`: e5's tokens), heads'
L2 penalty and epochs, gate and mix; the shipped test split is decided by models fitted on the
whole train split, beside it. The independent split is never read. Embeddings are cached in the
data dir (`.tiermesh/router-embeddings-<model>-<length>.npz`), so a second run takes the fast models' fitting only.

The train split holds the hard cases (short asks for big jobs, the breadth set), so its
cross-validated accuracy is lower than the test split's; it is the one that tells settings apart.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence

from services.router import complexity, intent, second_opinion
from services.router.complexity import ComplexityAnalyzer
from services.router.features import analyse
from services.router.intent import IntentClassifier
from services.router.linear import train
from services.router.policy import POLICY_PATH, Look, Router, load_policy
from services.router.train import (
    COMPLEXITY_PARAMS,
    INTENT_PARAMS,
    SECOND_OPINION_PARAMS,
    embed_openings,
    embeddings_cache,
    load_rows,
)
from services.runtime.config import REPO_ROOT

FOLDS = 5
GATES = (0.6, 0.65, 0.7, 0.8)
MIXES = (0.0, 0.5, 0.6, 0.7, 0.8, 1.0)  # 0: the fast path alone
SLOW_SHARE = 0.25  # the slow path's budget: at most a quarter of messages


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default=second_opinion.EMBEDDING_MODEL,
        choices=(second_opinion.EMBEDDING_MODEL, second_opinion.E5),
        help="the embedding model the heads read",
    )
    parser.add_argument(
        "--tokens",
        default="6,9,12,16,24,40",
        help="opening lengths to try, comma-separated (USE: words; multilingual-e5-small: its tokens)",
    )
    parser.add_argument(
        "--l2",
        default=str(SECOND_OPINION_PARAMS["l2"]),
        help="the heads' L2 penalties to try, comma-separated",
    )
    parser.add_argument(
        "--epochs",
        default=str(SECOND_OPINION_PARAMS["epochs"]),
        help="the heads' training epochs to try, comma-separated",
    )
    args = parser.parse_args(argv)
    lengths = [int(n) for n in args.tokens.split(",")]
    fits = [{"l2": float(l2), "epochs": int(e)} for l2 in args.l2.split(",") for e in args.epochs.split(",")]

    policy = load_policy(POLICY_PATH)
    train_rows = load_rows("train")
    rows = [*train_rows, *load_rows("test")]
    n_train = len(train_rows)
    analyses = [analyse(r["text"]) for r in rows]
    intent_x = [intent.features(a) for a in analyses]
    cx_x = [complexity.features(a) for a in analyses]
    names = sorted({name for f in cx_x[:n_train] for name in f})
    y_intent = [intent.INTENTS.index(r["intent"]) for r in rows]
    y_cx = [complexity.LEVELS.index(r["complexity"]) for r in rows]
    gold = [policy.select(r["complexity"], r["intent"], "standard").tier for r in rows]

    order = list(range(n_train))
    random.Random(0).shuffle(order)
    # (name, fitted on, decided): five folds of the train split, then train -> test
    sets = [(f"fold {k}", sorted(set(order) - set(order[k::FOLDS])), sorted(order[k::FOLDS])) for k in range(FOLDS)]
    sets.append(("test", list(range(n_train)), list(range(n_train, len(rows)))))

    # Each set's Router, with fast models fitted on its part, and its fast path's look at each message.
    routers: dict[str, Router] = {}
    looks: dict[str, list[Look]] = {}
    for name, fitted, decided in sets:
        im = train([(intent_x[i], y_intent[i]) for i in fitted], intent.INTENTS, **INTENT_PARAMS)
        cm = train([(cx_x[i], y_cx[i]) for i in fitted], complexity.LEVELS, **COMPLEXITY_PARAMS)
        routers[name] = router = Router(
            policy, IntentClassifier(im, policy.min_intent_confidence), ComplexityAnalyzer(cm)
        )
        looks[name] = [router.look(rows[i]["text"]) for i in decided]
        print(f"fast models fitted for {name}", flush=True)

    engine = second_opinion.engine(args.model)
    print(
        f"\n{'length':>6} {'l2':>7} {'epochs':>6} gate  mix  | "
        "cross-validated tier intent complexity slow | test tier slow"
    )
    best: tuple[float, str] | None = None  # the rule's choice: (cross-validated tier, setting)
    for tokens, fit in ((t, f) for t in lengths for f in fits):
        cache = embeddings_cache(REPO_ROOT / ".tiermesh", args.model, tokens)
        vectors = embed_openings(engine, [engine.opening(r["text"], tokens) for r in rows], cache)
        inputs = [second_opinion.inputs(v, f, names) for v, f in zip(vectors, cx_x, strict=True)]
        heads: dict[str, tuple[second_opinion.Head, second_opinion.Head]] = {}
        opinions: dict[str, list[second_opinion.Opinion]] = {}
        for name, fitted, decided in sets:
            ih, ch = (
                second_opinion.fit_head([inputs[i] for i in fitted], [y[i] for i in fitted], labels, **fit)
                for y, labels in ((y_intent, intent.INTENTS), (y_cx, complexity.LEVELS))
            )
            heads[name] = (ih, ch)
            heard = second_opinion.SecondOpinion(ih, ch, names)
            opinions[name] = [heard.opinion(vectors[i], cx_x[i]) for i in decided]
        for gate in GATES:
            for mix in MIXES:
                tally: dict[str, list[int]] = {}
                for name, _, decided in sets:
                    second = second_opinion.SecondOpinion(*heads[name], names, gate=gate, mix=mix)
                    counts = [0, 0, 0, 0, len(decided)]  # tier, intent, complexity right; second opinions asked
                    for i, look, opinion in zip(decided, looks[name], opinions[name], strict=True):
                        if second.needed(look.intent, look.complexity):
                            counts[3] += 1
                            look = Look(
                                look.analysis,
                                second.blend(look.intent, opinion.intent),
                                look.complexity_features,
                                second.blend(look.complexity, opinion.complexity),
                            )
                        d = routers[name].conclude(look)
                        counts[0] += d.tier == gold[i]
                        counts[1] += d.intent == rows[i]["intent"]
                        counts[2] += d.complexity == rows[i]["complexity"]
                    tally[name] = counts
                folds = [tally[name] for name, _, _ in sets[:FOLDS]]
                total = sum(t[4] for t in folds)
                cv = [sum(t[i] for t in folds) / total for i in range(4)]
                test = tally["test"]
                setting = f"{tokens:>6} {fit['l2']:>7g} {fit['epochs']:>6} {gate:<5} {mix:<4}"
                print(
                    f"{setting} | {cv[0]:>20.4f} {cv[1]:.4f} {cv[2]:.4f} {cv[3]:>10.3f} | "
                    f"{test[0] / test[4]:.4f} {test[3] / test[4]:.3f}",
                    flush=True,
                )
                if mix and cv[3] <= SLOW_SHARE and (best is None or cv[0] > best[0] + 1e-9):
                    best = (cv[0], setting)
    if best is not None:
        print(f"\nthe rule's choice (best tier with the slow path for at most {SLOW_SHARE:.0%} of messages):")
        print(f"{best[1]} | {best[0]:>20.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
