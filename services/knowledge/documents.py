"""Reads files into documents for ingestion: Markdown, plain text and HTML, one file or a folder tree.

Light on purpose (standard library only): `tiermesh ingest` runs it on the client side. A
document's id is its path relative to the folder given, without the extension, with `/`
separators (`helpcenter/boleto-bancario.pt.md` under `helpcenter/` -> `boleto-bancario.pt`);
its title is the first `# ` heading (or HTML `<title>` / `<h1>`), else the file name. A YAML-style
front matter block of `key: value` lines becomes metadata; `source` and `format` are added.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

FORMATS = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".text": "text", ".html": "html", ".htm": "html"}
MAX_FILE_BYTES = 8 * 1024 * 1024
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)\n---[ \t]*\n", re.S)


@dataclass
class SourceDocument:
    id: str
    title: str
    text: str
    metadata: dict[str, str] = field(default_factory=dict)
    path: Path | None = None


class SkippedFile(Exception):
    """A file that cannot be ingested, with the reason."""


class _HtmlToText(HTMLParser):
    """Keeps the text and the structure chunking needs: headings as `#` lines, blocks as paragraphs."""

    _BLOCKS = frozenset("p div section article li tr table ul ol blockquote pre br hr dd dt".split())
    _SKIP = frozenset("script style noscript template head nav footer".split())

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self.h1 = ""
        self._skip = 0
        self._in_title = False
        self._heading: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif re.fullmatch(r"h[1-6]", tag):
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
            self._heading = tag
        elif tag in self._BLOCKS:
            self.parts.append("\n- " if tag == "li" else "\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        elif tag == self._heading:
            self.parts.append("\n\n")
            self._heading = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
            return
        if self._skip:
            return
        text = re.sub(r"\s+", " ", data)
        if self._heading == "h1":
            self.h1 += text
        self.parts.append(text)

    def text(self) -> str:
        joined = "".join(self.parts)
        lines = [line.strip() for line in joined.splitlines()]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _front_matter(text: str) -> tuple[dict[str, str], str]:
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    meta: dict[str, str] = {}
    for line in match.group(1).splitlines():
        key, sep, value = line.partition(":")
        if sep and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", key.strip()):
            meta[key.strip()] = value.strip().strip("\"'")[:1024]
    return meta, text[match.end() :]


def read_document(path: Path, root: Path | None = None) -> SourceDocument:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise SkippedFile(f"{path}: not Markdown, plain text or HTML (by extension)")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise SkippedFile(f"{path}: {size} bytes is over the limit of {MAX_FILE_BYTES}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SkippedFile(f"{path}: not UTF-8 text") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    meta, body = _front_matter(text)
    title = meta.pop("title", "")
    if fmt == "html":
        parser = _HtmlToText()
        parser.feed(body)
        parser.close()
        body = parser.text()
        title = title or parser.title.strip() or parser.h1.strip()
    elif not title:
        heading = re.search(r"^#[ \t]+(.+?)[ \t#]*$", body, re.M)
        title = heading.group(1).strip() if heading else ""
    base = root if root is not None else path.parent
    rel = path.relative_to(base) if path.is_relative_to(base) else Path(path.name)
    doc_id = rel.with_suffix("").as_posix()
    meta.setdefault("source", rel.as_posix())
    meta["format"] = fmt
    if not body.strip():
        raise SkippedFile(f"{path}: no text")
    return SourceDocument(id=doc_id[:256], title=(title or path.stem)[:512], text=body, metadata=meta, path=path)


def discover(paths: list[Path]) -> Iterator[tuple[Path, Path | None]]:
    """(file, root) for each file given and each supported file under each folder given, sorted."""
    for p in paths:
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                hidden = any(part.startswith(".") for part in f.relative_to(p).parts)
                if f.is_file() and f.suffix.lower() in FORMATS and not hidden:
                    yield f, p
        else:
            yield p, None
