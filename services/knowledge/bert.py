"""A BERT sentence encoder in plain PyTorch: the model files a sentence-transformers model ships
(config.json, model.safetensors, tokenizer.json, 1_Pooling/config.json), read without importing
sentence-transformers or transformers.

Those two libraries pull in scikit-learn, SciPy and most of transformers at import (3.5 s and
~400 MB here) to run what is, for an encoder like all-MiniLM-L6-v2, a few dozen lines of
PyTorch: token, position and type embeddings, then post-norm Transformer layers with GELU, then
the mean of the token states. Attention is PyTorch's scaled_dot_product_attention. Texts are
batched by length under a token budget, so short texts are not padded to long ones and no batch
is too big for the CPU's caches. The vectors are those sentence-transformers gives
(tests/knowledge/test_bert.py holds them to 1e-5).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn
from torch.nn import functional

from services.runtime.config import ConfigError


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, positions: int, types: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(positions, hidden)
        self.token_type_embeddings = nn.Embedding(types, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        x = self.word_embeddings(ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        out: torch.Tensor = self.LayerNorm(x)
        return out


class _Layer(nn.Module):
    """One post-norm BERT layer: self-attention, then a GELU feed-forward, each added and normalised."""

    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ConfigError(f"hidden size {hidden} is not a multiple of {heads} attention heads")
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden, eps=eps)
        self.up = nn.Linear(hidden, intermediate)
        self.down = nn.Linear(intermediate, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        attended = functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        x = self.norm1(x + self.out(attended.transpose(1, 2).reshape(b, t, h)))
        out: torch.Tensor = self.norm2(x + self.down(functional.gelu(self.up(x))))
        return out


class BertEncoder(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        if cfg.get("model_type") != "bert" or cfg.get("hidden_act", "gelu") != "gelu":
            kind = cfg.get("model_type")
            raise ConfigError(f"the local embedding model must be a BERT encoder with GELU, got {kind!r}")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError("the local embedding model must use absolute position embeddings")
        hidden = int(cfg["hidden_size"])
        eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.embeddings = _Embeddings(
            int(cfg["vocab_size"]), int(cfg["max_position_embeddings"]), int(cfg.get("type_vocab_size", 2)), hidden, eps
        )
        heads, intermediate = int(cfg["num_attention_heads"]), int(cfg["intermediate_size"])
        self.layers = nn.ModuleList(
            _Layer(hidden, heads, intermediate, eps) for _ in range(int(cfg["num_hidden_layers"]))
        )

    def load_bert_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Map a BertModel's tensors (names as transformers saves them) onto these modules."""
        state: dict[str, torch.Tensor] = {}
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            state[f"embeddings.{name}.weight"] = weights[f"embeddings.{name}.weight"]
        for part in ("weight", "bias"):
            state[f"embeddings.LayerNorm.{part}"] = weights[f"embeddings.LayerNorm.{part}"]
        for i in range(len(self.layers)):
            src = f"encoder.layer.{i}."
            dst = f"layers.{i}."
            for part in ("weight", "bias"):
                state[f"{dst}qkv.{part}"] = torch.cat(
                    [weights[f"{src}attention.self.{p}.{part}"] for p in ("query", "key", "value")]
                )
                state[f"{dst}out.{part}"] = weights[f"{src}attention.output.dense.{part}"]
                state[f"{dst}norm1.{part}"] = weights[f"{src}attention.output.LayerNorm.{part}"]
                state[f"{dst}up.{part}"] = weights[f"{src}intermediate.dense.{part}"]
                state[f"{dst}down.{part}"] = weights[f"{src}output.dense.{part}"]
                state[f"{dst}norm2.{part}"] = weights[f"{src}output.LayerNorm.{part}"]
        self.load_state_dict(state, strict=True)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean of the last layer's token states over the real (unpadded) tokens, L2-normalised."""
        x = self.embeddings(ids)
        keep = mask.bool()[:, None, None, :]  # every query may attend to every real key
        for layer in self.layers:
            x = layer(x, keep)
        weights = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return functional.normalize(pooled, p=2.0, dim=1)


class SentenceEncoder:
    """Texts in, unit vectors out, from a sentence-transformers model directory on disk."""

    def __init__(self, path: Path) -> None:
        cfg = json.loads((path / "config.json").read_text())
        pooling_file = path / "1_Pooling" / "config.json"
        if pooling_file.exists():
            pooling = json.loads(pooling_file.read_text())
            if not pooling.get("pooling_mode_mean_tokens") or any(
                pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens")
            ):
                raise ConfigError(f"{pooling_file}: only mean pooling is supported")
        st_file = path / "sentence_bert_config.json"
        self.max_tokens = int(json.loads(st_file.read_text()).get("max_seq_length", 512)) if st_file.exists() else 512
        self.max_tokens = min(self.max_tokens, int(cfg["max_position_embeddings"]))
        self.dimension = int(cfg["hidden_size"])
        self.pad_id = int(cfg.get("pad_token_id", 0))
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_tokens)
        self.tokenizer.no_padding()
        self.model = BertEncoder(cfg)
        self.model.load_bert_weights(load_file(str(path / "model.safetensors")))
        self.model.eval()

    def encode(self, texts: list[str], batch_size: int = 32, max_batch_tokens: int = 2048) -> npt.NDArray[np.float32]:
        """Unit vectors for texts, in order. Texts go longest first in batches of at most
        batch_size texts and max_batch_tokens tokens (padding counted), so little is padded."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(encodings[i].ids))
        with torch.inference_mode():
            start = 0
            while start < len(order):
                width = len(encodings[order[start]].ids)
                rows = order[start : start + max(1, min(batch_size, max_batch_tokens // width))]
                start += len(rows)
                ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):
                    n = len(encodings[i].ids)
                    ids[r, :n] = torch.tensor(encodings[i].ids)
                    mask[r, :n] = 1
                out[rows] = self.model(ids, mask).numpy()
        return out
