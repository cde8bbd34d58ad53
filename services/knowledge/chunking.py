"""Cuts a document into passages along its structure (headings, paragraphs), within a token budget.

A passage never crosses a heading: each section is packed paragraph by paragraph up to
`max_tokens`; a paragraph over the budget is cut at sentences, and a sentence over it at words.
Consecutive passages of one section share up to `overlap_tokens` of trailing text so a fact
split between them is whole in one of them. Every passage keeps its code-point offsets into
the document and the headings above it (embedded with it, but not part of its span).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

TokenCounter = Callable[[Sequence[str]], list[int]]

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|\n")
_WORD = re.compile(r"\S+\s*")


@dataclass(frozen=True)
class Passage:
    index: int
    start: int
    end: int
    text: str
    headings: tuple[str, ...]

    def chunk_id(self, document_id: str) -> str:
        """Stable while the document does not change: position and content both name it."""
        digest = hashlib.sha256(self.text.encode()).hexdigest()[:10]
        return f"{document_id}#{self.index}-{digest}"


@dataclass(frozen=True)
class _Unit:
    start: int
    end: int
    tokens: int


@dataclass
class _Section:
    headings: tuple[str, ...]
    blocks: list[tuple[int, int]]


def _sections(text: str) -> list[_Section]:
    """Headings open sections; blank lines end blocks. A heading line is the first block of its section."""
    sections = [_Section((), [])]
    stack: list[tuple[int, str]] = []
    block_start: int | None = None
    pos = 0
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        match = _HEADING.match(stripped)
        if (match or not stripped) and block_start is not None:
            sections[-1].blocks.append((block_start, pos))
            block_start = None
        if match:
            level, title = len(match.group(1)), match.group(2).strip()
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, title))
            heading = (pos, pos + len(line.rstrip()))
            if sections[-1].headings and len(sections[-1].blocks) == 1:
                # A heading with no text of its own (`# Title` straight before `## Part`) rides
                # with the next section instead of becoming a passage that says nothing.
                sections[-1] = _Section(tuple(t for _, t in stack), [sections[-1].blocks[0], heading])
            else:
                sections.append(_Section(tuple(t for _, t in stack), [heading]))
        elif stripped and block_start is None:
            block_start = pos
        pos += len(line)
    if block_start is not None:
        sections[-1].blocks.append((block_start, pos))
    return [s for s in sections if s.blocks]


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _pieces(text: str, start: int, end: int, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    out, cursor = [], start
    for m in pattern.finditer(text, start, end):
        if m.end() > cursor:
            out.append((cursor, m.end()))
            cursor = m.end()
    if cursor < end:
        out.append((cursor, end))
    return [span for span in (_trim(text, s, e) for s, e in out) if span[0] < span[1]]


class Chunker:
    """Cuts documents with one token counter (the embedding model's tokenizer) and one budget."""

    def __init__(self, count_tokens: TokenCounter, max_tokens: int = 200, overlap_tokens: int = 40) -> None:
        if not 16 <= max_tokens <= 8192:
            raise ValueError(f"max_tokens must be 16 to 8192, not {max_tokens}")
        if not 0 <= overlap_tokens < max_tokens // 2:
            raise ValueError(
                f"overlap_tokens must be 0 to less than half of max_tokens ({max_tokens}), not {overlap_tokens}"
            )
        self.count_tokens = count_tokens
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens

    def _units(self, text: str, spans: list[tuple[int, int]]) -> list[_Unit]:
        """Spans as units of at most max_tokens: too-long ones are cut at sentences, then words."""
        counts = self.count_tokens([text[s:e] for s, e in spans])
        units: list[_Unit] = []
        for (s, e), n in zip(spans, counts, strict=True):
            if n <= self.max_tokens:
                units.append(_Unit(s, e, n))
                continue
            finer = _pieces(text, s, e, _SENTENCE_END)
            if len(finer) > 1:
                units.extend(self._units(text, finer))
            else:
                units.extend(self._words(text, s, e))
        return units

    def _words(self, text: str, start: int, end: int) -> list[_Unit]:
        """A run with no sentence break: windows of words under the budget. A word is cut only
        when it alone is over the budget (pasted base64, a run of emoji): into pieces of
        `max_tokens` characters, which the tokenizer never reads as more tokens than that."""
        words: list[tuple[int, int]] = []
        for s, e in _pieces(text, start, end, _WORD):
            if e - s > self.max_tokens:
                words.extend((i, min(i + self.max_tokens, e)) for i in range(s, e, self.max_tokens))
            else:
                words.append((s, e))
        counts = self.count_tokens([text[s:e] for s, e in words])
        units: list[_Unit] = []
        cur_start, cur_end, cur_tokens = words[0][0], words[0][0], 0
        for (s, e), n in zip(words, counts, strict=True):
            if cur_tokens and cur_tokens + n > self.max_tokens:
                units.append(_Unit(cur_start, cur_end, cur_tokens))
                cur_start, cur_tokens = s, 0
            cur_end, cur_tokens = e, cur_tokens + n
        units.append(_Unit(cur_start, cur_end, cur_tokens))
        return units

    def chunk(self, text: str) -> list[Passage]:
        passages: list[Passage] = []
        for section in _sections(text):
            spans = [span for span in (_trim(text, s, e) for s, e in section.blocks) if span[0] < span[1]]
            if not spans:
                continue
            units = self._units(text, spans)
            current: list[_Unit] = []
            tokens = 0
            for unit in units:
                if current and tokens + unit.tokens > self.max_tokens:
                    passages.append(self._passage(text, current, section.headings, len(passages)))
                    current = self._overlap(current, unit.tokens)
                    tokens = sum(u.tokens for u in current)
                current.append(unit)
                tokens += unit.tokens
            if current:
                passages.append(self._passage(text, current, section.headings, len(passages)))
        return passages

    def _overlap(self, previous: list[_Unit], incoming: int) -> list[_Unit]:
        """Trailing units of the previous passage that fit the overlap and still leave room."""
        kept: list[_Unit] = []
        total = 0
        for unit in reversed(previous):
            if total + unit.tokens > self.overlap_tokens or total + unit.tokens + incoming > self.max_tokens:
                break
            kept.insert(0, unit)
            total += unit.tokens
        return kept

    @staticmethod
    def _passage(text: str, units: list[_Unit], headings: tuple[str, ...], index: int) -> Passage:
        start, end = units[0].start, units[-1].end
        return Passage(index=index, start=start, end=end, text=text[start:end], headings=headings)


def approximate_tokens(texts: Sequence[str]) -> list[int]:
    """A tokenizer-free estimate (word pieces run about 1.3 per word) for embedders without a local tokenizer."""
    return [
        max(1, round(len(t.split()) * 1.3 + sum(not c.isalnum() and not c.isspace() for c in t) * 0.5)) for t in texts
    ]
