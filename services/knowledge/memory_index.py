"""The embedded store's passages held in memory, so a search is a few array operations.

qdrant-client's embedded local mode keeps the store on disk for one process and answers a query
by visiting every point in Python: the filter, the sparse dot product and a copy of the payload,
point by point, query by query (on a slow VM of this machine kind, 46-50 ms a search for the
184 passages of the sample help centre, 284 ms for 5,000: bench/README.md). Knowledge in local
mode reads its points into this index once at start and re-reads a document's points after each
write it makes; the directory is locked to its process, so no one else writes. A search is then
a matrix product for the cosines and an inverted index for the keywords, scored as Qdrant scores
them: cosine on unit vectors, and the sparse dot product with Qdrant's IDF (`ln((n - df + 0.5) /
(df + 0.5) + 1)`, over every stored passage, as the collection's `modifier: idf` asks). A Qdrant
server answers with its own indexes instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Passage:
    """One stored point: its payload, its dense vector (unit length, as Qdrant keeps it for the
    cosine) and its sparse keyword vector, as arrays."""

    payload: Mapping[str, Any]
    dense: Floats
    indices: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]

    @classmethod
    def of(
        cls, payload: Mapping[str, Any], dense: npt.ArrayLike, indices: Sequence[int], values: Sequence[float]
    ) -> Passage:
        vector = np.asarray(dense, dtype=np.float32)
        norm = float(np.linalg.norm(vector))
        if len(indices) != len(values):
            raise ValueError("a sparse vector needs one value per index")
        return cls(
            payload,
            vector / np.float32(norm) if norm > 0 else vector,
            np.asarray(indices, dtype=np.int64),
            np.asarray(values, dtype=np.float64),
        )


@dataclass(frozen=True)
class Candidate:
    """A passage found for a query, before ranking: its payload, cosine and raw BM25 score
    (what the store's `rank` scores, whoever found it)."""

    payload: Mapping[str, Any]
    cosine: float
    keyword: float


class _Arrays:
    """What searches read, built in a few array operations after a change: the dense vectors as
    one matrix, and the keywords as postings (for each term, the rows that have it and their
    weights), sorted by term so a query's terms are found by binary search."""

    def __init__(self, passages: Mapping[str, Passage], dimension: int) -> None:
        rows = list(passages.values())
        self.size = len(rows)
        self.payloads = [p.payload for p in rows]
        self.matrix = (
            np.vstack([p.dense for p in rows]).astype(np.float32, copy=False)
            if rows
            else np.zeros((0, dimension), dtype=np.float32)
        )
        tenants: dict[str, list[int]] = {}
        for row, p in enumerate(rows):
            tenants.setdefault(str(p.payload.get("collection", "")), []).append(row)
        self.tenant_rows = {tenant: np.array(at, dtype=np.intp) for tenant, at in tenants.items()}
        lengths = np.array([p.indices.size for p in rows], dtype=np.intp)
        terms = np.concatenate([p.indices for p in rows] or [np.zeros(0, np.int64)])
        weights = np.concatenate([p.values for p in rows] or [np.zeros(0)])
        owners = np.repeat(np.arange(self.size, dtype=np.intp), lengths)
        order = np.argsort(terms)
        terms, self.weights, self.owners = terms[order], weights[order], owners[order]
        # Where each term's rows begin: the first entry, and every entry whose term differs from the one before.
        self.starts = np.flatnonzero(np.concatenate(([True], terms[1:] != terms[:-1]))) if terms.size else terms
        self.terms = terms[self.starts]
        self.ends = np.append(self.starts[1:], terms.size)

    def posting(self, term: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]] | None:
        """The rows that have `term`, and its weight in each."""
        at = int(np.searchsorted(self.terms, term))
        if at == self.terms.size or self.terms[at] != term:
            return None
        start, end = self.starts[at], self.ends[at]
        return self.owners[start:end], self.weights[start:end]


class MemoryIndex:
    """Passages by point id; searches read arrays rebuilt after the last change."""

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension
        self._passages: dict[str, Passage] = {}
        self._arrays: _Arrays | None = None

    def __len__(self) -> int:
        return len(self._passages)

    def replace(self, keep: Iterable[tuple[str, Passage]], drop: Iterable[str] = ()) -> None:
        """Drop the point ids `drop`, then store `keep` (id, passage); all or nothing."""
        kept = list(keep)
        for point_id, passage in kept:
            if passage.dense.shape != (self.dimension,):
                raise ValueError(f"point {point_id}: a {passage.dense.shape} vector in a {self.dimension}-wide index")
        for point_id in drop:
            self._passages.pop(point_id, None)
        self._passages.update(kept)
        self._arrays = None

    def ids_where(self, collection: str, document_ids: Iterable[str]) -> list[str]:
        """The point ids of these documents of this tenant."""
        wanted = set(document_ids)
        return [
            pid
            for pid, p in self._passages.items()
            if p.payload.get("collection") == collection and p.payload.get("document_id") in wanted
        ]

    def _built(self) -> _Arrays:
        if self._arrays is None:
            self._arrays = _Arrays(self._passages, self.dimension)
        return self._arrays

    def search(
        self,
        dense: Floats,
        sparse: tuple[Sequence[int], Sequence[float]],
        collection: str,
        limit: int,
        model: str | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> list[Candidate]:
        """The `limit` nearest passages of the tenant by meaning and the `limit` best by keywords
        (those that share a word with the query), each with both scores. `model`: only passages
        that model embedded; `meta`: only passages whose metadata has each key at that value."""
        a = self._built()
        allowed = a.tenant_rows.get(collection)
        if allowed is None or limit <= 0:
            return []
        if model is not None or meta:
            # Checked on the tenant's passages only; most searches name neither.
            wanted = (meta or {}).items()
            allowed = allowed[
                [
                    (model is None or payload.get("model") == model)
                    and all((payload.get("meta") or {}).get(k) == v for k, v in wanted)
                    for payload in map(a.payloads.__getitem__, allowed.tolist())
                ]
            ]
            if not allowed.size:
                return []
        norm = float(np.linalg.norm(dense))
        query = (dense / norm if norm > 0 else dense).astype(np.float32, copy=False)
        cosines = a.matrix @ query
        keyword = np.zeros(a.size, dtype=np.float64)
        shares = np.zeros(a.size, dtype=bool)
        for term, weight in zip(*sparse, strict=True):
            posting = a.posting(int(term))
            if posting is None:
                continue
            rows, weights = posting
            idf = math.log((a.size - rows.size + 0.5) / (rows.size + 0.5) + 1)
            keyword[rows] += weights * (float(weight) * idf)
            shares[rows] = True
        chosen = set(_best(allowed, cosines[allowed], limit).tolist())
        worded = allowed[shares[allowed]]
        chosen.update(_best(worded, keyword[worded], limit).tolist())
        return [
            Candidate(a.payloads[row], float(cosines[row]), float(np.float32(keyword[row])))
            for row in sorted(chosen, key=lambda r: (-float(cosines[r]), r))
        ]


def _best(rows: npt.NDArray[np.intp], scores: npt.NDArray[Any], limit: int) -> npt.NDArray[np.intp]:
    """The rows of the `limit` highest scores, in no particular order."""
    if rows.size <= limit:
        return rows
    return rows[np.argpartition(-scores, limit - 1)[:limit]]
