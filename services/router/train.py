"""Trains the intent and complexity models from data/routing/*.jsonl (train split only).

`python -m services.router.train` (or `make train-router`) writes intent_model.json and
complexity_model.json beside this file. Deterministic: the same data gives the same weights.
The test split is never read here; `make bench-router` evaluates on it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from services.router import complexity, intent
from services.router.features import analyse
from services.router.linear import LinearModel, accuracy, train
from services.runtime.config import REPO_ROOT

DATA_DIR = REPO_ROOT / "data" / "routing"
# train: what the models learn from; test: held out from the same writers; independent: written
# by another hand with no template shared with the rest, never trained or tuned on.
SPLITS = ("train", "test", "independent")
# Chosen by 5-fold cross-validation on the train split (never on the test split): averaging the
# second half of the epochs made accuracy the same for every shuffle seed tried.
INTENT_PARAMS: dict[str, Any] = {
    "epochs": 30,
    "l2": 1e-4,
    "learning_rate": 0.2,
    "min_count": 2,
    "seed": 7,
    "average_from": 0.5,
}
COMPLEXITY_PARAMS: dict[str, Any] = {"epochs": 100, "l2": 1e-5, "learning_rate": 1.0, "seed": 7}
# The heads' L2 penalty and epochs, cross-validated beside the gate and mix (bench/router_select.py
# --l2 --epochs): less penalty read USE's embeddings better (L2 1e-2 to 1e-4, 600 and 2,000 epochs).
SECOND_OPINION_PARAMS: dict[str, Any] = {"epochs": 2000, "l2": 3e-4}


def load_rows(split: str) -> list[dict[str, str]]:
    rows = []
    for path in sorted(DATA_DIR.glob("*.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("split") not in SPLITS:
                raise ValueError(f"{path.name}:{n}: split must be one of {', '.join(SPLITS)}")
            if row["intent"] not in intent.INTENTS or row["complexity"] not in complexity.LEVELS:
                raise ValueError(f"{path.name}:{n}: unknown label {row['intent']!r}/{row['complexity']!r}")
            if row["split"] == split:
                rows.append(row)
    return rows


def data_fingerprint(rows: Sequence[Mapping[str, str]]) -> str:
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r["text"]):
        digest.update(f"{row['text']}\x00{row['intent']}\x00{row['complexity']}\x00".encode())
    return digest.hexdigest()[:16]


def fit(extra: Sequence[Mapping[str, str]] = ()) -> tuple[LinearModel, LinearModel]:
    """Both models from the train split (and `extra` labelled rows: text, intent, complexity)."""
    rows = [*load_rows("train"), *extra]
    analyses = [analyse(r["text"]) for r in rows]
    meta = {"trained_on": len(rows), "data_sha256": data_fingerprint(rows)}
    intent_ex = [(intent.features(a), intent.INTENTS.index(r["intent"])) for a, r in zip(analyses, rows, strict=True)]
    cx_ex = [
        (complexity.features(a), complexity.LEVELS.index(r["complexity"])) for a, r in zip(analyses, rows, strict=True)
    ]
    intent_model = train(intent_ex, intent.INTENTS, meta={**meta, "params": INTENT_PARAMS}, **INTENT_PARAMS)
    cx_model = train(cx_ex, complexity.LEVELS, meta={**meta, "params": COMPLEXITY_PARAMS}, **COMPLEXITY_PARAMS)
    print(
        f"trained on {len(rows)} messages: intent {len(intent_model.weights)} features "
        f"(train accuracy {accuracy(intent_model, intent_ex):.3f}), complexity {len(cx_model.weights)} features "
        f"(train accuracy {accuracy(cx_model, cx_ex):.3f})"
    )
    return intent_model, cx_model


def embeddings_cache(folder: Path, model: str, length: int) -> Path:
    """Where the openings' embeddings of `model` at `length` are kept: a file per model and
    opening length, as another model's vectors, or another opening's, are not these."""
    return folder / f"router-embeddings-{model}-{length}.npz"


def embed_openings(engine: Any, openings: Sequence[str], cache: Path | None) -> list[list[float]]:
    """The openings' embeddings, reusing those `cache` (an .npz by opening) already holds: embedding
    the project's 2,000 messages takes a minute here, and they change only with the data."""
    import numpy as np

    known: dict[str, Any] = {}
    if cache is not None and cache.is_file():
        with np.load(cache) as stored:
            known = dict(zip(stored["texts"].tolist(), stored["vectors"].tolist(), strict=True))
    missing = sorted({t for t in openings if t not in known})
    if missing:
        known.update(zip(missing, engine.vectors(missing), strict=True))
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            texts = sorted(known)
            with cache.open("wb") as f:
                np.savez(f, texts=np.asarray(texts), vectors=np.asarray([known[t] for t in texts], dtype=np.float32))
    return [known[t] for t in openings]


def fit_second_opinion(extra: Sequence[Mapping[str, str]] = (), cache: Path | None = None) -> dict[str, Any]:
    """The slow path's heads (second_opinion.py) on the train split: each message's opening embedded,
    with the named complexity features beside it."""
    from services.router import second_opinion

    rows = [*load_rows("train"), *extra]
    named = [complexity.features(analyse(r["text"])) for r in rows]
    names = sorted({name for f in named for name in f})
    engine = second_opinion.engine()
    vectors = embed_openings(engine, [engine.opening(r["text"], second_opinion.HEAD_WORDS) for r in rows], cache)
    inputs = [second_opinion.inputs(v, f, names) for v, f in zip(vectors, named, strict=True)]
    heads = {
        key: second_opinion.fit_head(inputs, [labels.index(r[key]) for r in rows], labels, **SECOND_OPINION_PARAMS)
        for key, labels in (("intent", intent.INTENTS), ("complexity", complexity.LEVELS))
    }
    print(
        f"second opinion: {second_opinion.EMBEDDING_MODEL} openings of {len(rows)} messages, "
        f"{len(names)} named features"
    )
    return {
        "embedding": second_opinion.EMBEDDING_MODEL,
        "head_words": second_opinion.HEAD_WORDS,
        "features": names,
        "intent": heads["intent"].to_json(),
        "complexity": heads["complexity"].to_json(),
        "meta": {"trained_on": len(rows), "data_sha256": data_fingerprint(rows), "params": SECOND_OPINION_PARAMS},
    }


def bundle(
    intent_model: LinearModel,
    cx_model: LinearModel,
    meta: Mapping[str, Any],
    second_opinion: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The models as one file (`router.models_path`): both linear models, and the second opinion's heads."""
    from services.router.policy import MODELS_FORMAT

    out = {"format": MODELS_FORMAT, "intent": intent_model.to_json(), "complexity": cx_model.to_json(), "meta": meta}
    if second_opinion is not None:
        out["second_opinion"] = dict(second_opinion)
    return out


def main() -> int:
    started = time.monotonic()
    intent_model, cx_model = fit()
    for model, path in ((intent_model, intent.MODEL_PATH), (cx_model, complexity.MODEL_PATH)):
        Path(path).write_text(
            json.dumps(model.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8"
        )
        print(f"wrote {Path(path).relative_to(REPO_ROOT)} ({Path(path).stat().st_size // 1024} KiB)")
    from services.router.second_opinion import MODEL_PATH as SECOND_PATH

    SECOND_PATH.write_text(json.dumps(fit_second_opinion(), separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {SECOND_PATH.relative_to(REPO_ROOT)} ({SECOND_PATH.stat().st_size // 1024} KiB)")
    print(f"took {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
