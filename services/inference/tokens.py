"""Token counts for an OpenAI-compatible deployment whose provider sent no usage.

The counts are the ones LiteLLM's `token_counter` gives for OpenAI's chat models and for the
models OpenAI-compatible servers run (held equal by tests/unit/test_lean_path.py), made with
tiktoken alone so the lean path never imports LiteLLM: text is encoded 1,024 characters at a
time; a conversation costs 3 tokens per message and 1 per name on top of its text, and 3 more
that prime the reply. A model tiktoken does not know is counted with cl100k_base.

The encodings are read from the copies the pinned LiteLLM wheel ships (cl100k_base, o200k_base,
p50k_base), never downloaded; a model whose encoding is not among them is counted with
cl100k_base.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

CHUNK_CHARS = 1024
PER_MESSAGE = 3
PER_NAME = 1
REPLY_PRIMING = 3
DEFAULT_MODEL = "gpt-4o"  # what OpenAI-compatible servers (vLLM, Ollama, the simulator) are counted as
_FALLBACK = "cl100k_base"


def _bundled_dir() -> Path | None:
    spec = importlib.util.find_spec("litellm")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
    return path if path.is_dir() else None


def _on_disk(name: str, folder: Path) -> bool:
    """Whether tiktoken's cache folder holds the encoding (tiktoken names a file by its URL's SHA-1)."""
    url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
    return (folder / hashlib.sha1(url.encode(), usedforsecurity=False).hexdigest()).is_file()


@lru_cache(maxsize=8)
def _encoding(name: str) -> Any:
    import tiktoken

    folder = _bundled_dir()
    if folder is None:
        raise RuntimeError("LiteLLM's bundled tokenizer files are missing: reinstall litellm==1.106.2")
    # The same setting LiteLLM makes when it is imported: tiktoken reads from here, offline.
    os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)
    return tiktoken.get_encoding(name if _on_disk(name, folder) else _FALLBACK)


def encoding_name(model: str) -> str:
    import tiktoken

    if "gpt-4o" in model:
        return "o200k_base"
    try:
        return tiktoken.encoding_name_for_model(model)
    except KeyError:
        return _FALLBACK


def count_text(model: str, text: str) -> int:
    enc = _encoding(encoding_name(model))
    return sum(
        len(enc.encode(text[i : i + CHUNK_CHARS], disallowed_special=())) for i in range(0, len(text), CHUNK_CHARS)
    )


def count_messages(model: str, messages: Sequence[Mapping[str, str]]) -> int:
    total = REPLY_PRIMING
    for message in messages:
        total += PER_MESSAGE
        for key, value in message.items():
            if isinstance(value, str):
                total += count_text(model, value) + (PER_NAME if key == "name" else 0)
    return total
