"""Two models side by side: multilingual-e5-small and Google's Universal Sentence Encoder read each
text, and a store searches both with one vector a passage. These load both real models."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from services.knowledge.embedder import E5Embedder, PairEmbedder, USEEmbedder, local_embedder

TEXTS = ["Onde está o meu pedido?", "Where is my order?", "Pix com 5% de desconto", "quantum chromodynamics"]


@pytest.fixture(scope="module")
async def models() -> tuple[E5Embedder, USEEmbedder, PairEmbedder]:
    e5, use = E5Embedder(), USEEmbedder()
    pair = PairEmbedder(E5Embedder(), USEEmbedder(), weight=0.5)
    await asyncio.gather(e5.start(), use.start(), pair.start())
    return e5, use, pair


async def test_a_pair_cosine_is_the_mean_of_both_models_cosines(
    models: tuple[E5Embedder, USEEmbedder, PairEmbedder],
) -> None:
    e5, use, pair = models
    for query in (True, False):
        a, b, both = [await m.embed(TEXTS, query=query) for m in (e5, use, pair)]
        assert both.shape == (len(TEXTS), 384 + 512) and pair.dimension == 896
        assert np.allclose(np.linalg.norm(both, axis=1), 1.0, atol=1e-3)
        expected = 0.5 * (a @ a.T) + 0.5 * (b @ b.T)
        assert np.allclose(both @ both.T, expected, atol=2e-3)


async def test_use_puts_a_question_next_to_its_translation(
    models: tuple[E5Embedder, USEEmbedder, PairEmbedder],
) -> None:
    """What the second model is there for: e5 alone scores any two texts near 0.7-0.8; USE keeps
    a translation close and unrelated text far."""
    _, use, _ = models
    v = await use.embed(TEXTS)
    translated, unrelated = float(v[0] @ v[1]), float(v[0] @ v[3])
    assert translated > 0.7 and unrelated < 0.3, (translated, unrelated)


async def test_a_weight_outside_zero_to_one_is_refused() -> None:
    for weight in (0.0, 1.0, -0.5, 2.0):
        with pytest.raises(ValueError, match="between 0 and 1"):
            PairEmbedder(E5Embedder(), USEEmbedder(), weight=weight)


@pytest.mark.parametrize(
    "text",
    ["", " ", "\x00", "a\x00b", "🙂" * 50, "ação " * 3000, "<script>alert(1)</script>", "\u202eevil", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢"],
    ids=["empty", "space", "nul", "inner-nul", "emoji", "very-long", "html", "bidi", "math-letters"],
)
async def test_odd_text_gets_a_unit_vector_from_the_pair(
    models: tuple[E5Embedder, USEEmbedder, PairEmbedder], text: str
) -> None:
    _, _, pair = models
    vectors = await pair.embed([text], query=True)
    norm = float(np.linalg.norm(vectors[0]))
    assert vectors.shape == (1, 896) and math.isfinite(norm) and abs(norm - 1.0) < 1e-3


def test_each_local_model_name_builds_its_embedder() -> None:
    assert isinstance(local_embedder("multilingual-e5-small+use-multilingual-v3"), PairEmbedder)
    assert isinstance(local_embedder("use-multilingual-v3"), USEEmbedder)
    assert isinstance(local_embedder("multilingual-e5-small-enpt"), E5Embedder)
    assert (
        local_embedder("multilingual-e5-small+use-multilingual-v3").name == "multilingual-e5-small+use-multilingual-v3"
    )
