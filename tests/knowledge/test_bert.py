"""The Knowledge service's own BERT encoder gives the vectors sentence-transformers gives for the
same model files, and loading it leaves the heavy libraries out of the process."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from services.knowledge.bert import SentenceEncoder
from services.knowledge.embedder import local_model_path

TEXTS = [
    "How do I pay with Pix?",
    "Como faço para pagar com Pix? O QR code expira em 30 minutos.",
    "Reembolso do cartão de crédito: até 2 faturas. Çãõ ÁÉÍ ü ñ",
    "emoji 💸🚚 and CJK 配送 and RTL مرحبا",
    "",
    "a",
    # Far over the model's 256-token window: both truncate it the same way.
    "refund policy " * 400,
    "Cancelling your subscription\nBilling > Annual plans\nYou can cancel at any time; the plan runs until "
    "the end of the period you paid for, and nothing more is charged.",
]


@pytest.fixture(scope="module")
def ours() -> SentenceEncoder:
    return SentenceEncoder(local_model_path())


def test_vectors_match_sentence_transformers(ours: SentenceEncoder) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(local_model_path()), device="cpu", local_files_only=True)
    want = reference.encode(TEXTS, batch_size=3, normalize_embeddings=True, convert_to_numpy=True)
    # Small batches and a small token budget: the order, padding and batching must not matter.
    for batch_size, budget in ((32, 2048), (3, 2048), (32, 300), (1, 16)):
        got = ours.encode(TEXTS, batch_size=batch_size, max_batch_tokens=budget)
        assert got.shape == (len(TEXTS), 384)
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert ours.max_tokens == reference.max_seq_length == 256


def test_vectors_are_unit_length_and_empty_input_is_empty(ours: SentenceEncoder) -> None:
    got = ours.encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert ours.encode([]).shape == (0, 384)


def test_loading_the_local_model_leaves_heavy_libraries_out() -> None:
    code = (
        "import sys, asyncio\n"
        "from services.knowledge.embedder import LocalEmbedder\n"
        "async def main():\n"
        "    e = LocalEmbedder()\n"
        "    await e.start()\n"
        "    assert (await e.embed(['pix'])).shape == (1, 384)\n"
        "    await e.close()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in ('sentence_transformers', 'transformers', 'sklearn', 'scipy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
