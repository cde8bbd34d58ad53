"""Reads a message once and extracts what routing needs: normalized words, code, questions, language.

Everything here is plain Python and regular expressions compiled at import: a message is
analysed in tens of microseconds, and the same analysis feeds both the complexity score and
the intent classifier.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

# Code and technical content, each a named detector so decisions can say what they saw. Most
# detectors count literal markers with str.count (C speed); the few regular expressions run only
# when a cheap substring test says they could match, so a long message costs tens of microseconds.
_INLINE = re.compile(r"`[^`\n]{1,200}`")
_TRACE_MARKERS = (
    "Traceback (most recent call last)",
    "\n\tat ",
    "\n    at ",
    'File "',
    "Error: ",
    "Exception: ",
    "Exception in thread",
    "panic: ",
    "Segmentation fault",
    "Caused by: ",
)
_SQL_STRONG = ("select ", "insert into ", "delete from ", "create table ", "create index ", "alter table ")
_SQL_CLAUSES = (" from ", " where ", " join ", "group by ", "order by ", " set ", " values ", " limit ", " having ")
_SHELL_MARKERS = (
    "sudo ",
    "apt-get ",
    "pip install",
    "npm install",
    "npm run",
    "yarn add",
    "curl -",
    "docker run",
    "docker build",
    "docker compose",
    "kubectl ",
    "git push",
    "git pull",
    "git clone",
    "git rebase",
    "git merge",
    "chmod ",
    "\n$ ",
)
_YAML_LINE = re.compile(r"\s*-?\s*[\w.-]+:(?:\s+\S|$)")
_DIR_PATH = re.compile(r"/[\w.-]+/[\w./-]*")
_FILE_EXT = re.compile(r"\.(?:py|js|ts|tsx|jsx|go|java|rb|php|ya?ml|json|sql|sh|tf|env|toml|conf|log|cs|cpp|kt)\b")
_CODE_CHARS = ("{", "}", ";", "=>", "->", "==", "()", "&&", "||", "def ", "return ", "const ", "import ")
_EMOJI = re.compile("[\u2190-\u21ff\u2300-\u27bf\u2b00-\u2bff\U0001f000-\U0001faff]")

PROSE_SAMPLE = 600  # characters of prose read for words

_URL = re.compile(r"https?://\S+|www\.\S+")
_WORD = re.compile(r"[a-z0-9_]+(?:['-][a-z0-9_]+)*")
_SENTENCE_ENDS = (". ", "? ", "! ", ".\n", "?\n", "!\n")

_TECH_TERMS = frozenset(
    """
    api apis sdk sdks endpoint endpoints webhook webhooks json yaml xml http https rest graphql grpc oauth jwt token
    tokens
    sql query queries database db postgres postgresql mysql redis mongo mongodb index indexes docker container
    kubernetes k8s pod pods deploy deployment ci cd pipeline build compile compiler runtime python javascript typescript
    node nodejs react vue angular java kotlin swift golang go rust php ruby rails django flask fastapi spring laravel
    npm pip yarn library framework function functions method class classes variable array object string int null
    undefined exception error errors stack trace traceback bug debug log logs timeout latency cache caching thread
    async await promise callback regex script scripts server servers client backend frontend lambda aws gcp azure s3
    terraform nginx ssl tls cors header headers payload request requests response status 500 404 401 403 429 cli
    git github gitlab branch merge commit schema migration orm sdk's config configuration env integration integracao
    integrar chave requisicao requisicoes resposta servidor banco dados consulta codigo erro erros funcao variavel
    biblioteca implantacao
    """.split()
)
_PT_WORDS = frozenset(
    """
    o a os as um uma de da do das dos em no na nos nas para pra pro por com sem que nao não sim voce você vocês vcs
    eu meu minha meus minhas seu sua e é ou mas mais muito como quando onde porque pq qual quais quanto tem tenho
    ter está esta estou isso isto esse essa ele ela eles elas aqui ali ja já ainda tambem também tb obrigado obrigada
    obg oi ola olá bom boa dia tarde noite tudo bem gente ate até pedido entrega frete preco preço
    """.split()
)
_EN_WORDS = frozenset(
    """
    the a an of to in on for with without that not no yes you your i my me we our is are was were be been it this these
    those he she they them there here what when where why how which who can could would should will do does did have has
    had and or but if then than so just please pls thanks thx hi hello hey order shipping price
    """.split()
)


def _fold_table() -> dict[int, str]:
    table = {ord(d): "0" for d in "123456789"}  # numbers vary (order ids); their shape matters
    for code in range(0xC0, 0x250):
        ch = chr(code)
        base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        if base != ch and base.isascii():
            table[code] = base
    return table


_FOLD = _fold_table()


_ASCII_FOLD = bytes.maketrans(b"123456789", b"000000000")


# Words that carry no meaning alone (articles, prepositions, conjunctions, pronouns): they count
# in scores but are never shown as the evidence for an intent.
FUNCTION_WORDS = frozenset(
    """
    a o os as um uma uns umas de da do das dos em no na nos nas para pra pro por com sem que e ou mas se
    eu me meu minha voce vc vcs ele ela nos eles elas isso isto esse essa este esta aqui
    the a an of to in on at for with without and or but if is are was were be it this that these those
    i me my we our you your he she they them their there here as by from so
    """.split()
)


def fold(text: str) -> str:
    """Lower-case, strip accents and zero digits: `Não, PREÇO 129` -> `nao, preco 000`.

    Latin text takes the C fast path (NFKD, drop what is not ASCII: accents and emoji); other
    scripts keep their letters through the slower table."""
    lowered = text.lower()
    if lowered.isascii():
        return lowered.encode().translate(_ASCII_FOLD).decode()
    ascii_only = unicodedata.normalize("NFKD", lowered).encode("ascii", "ignore")
    if len(ascii_only) * 4 >= len(lowered) * 3:
        return ascii_only.translate(_ASCII_FOLD).decode()
    return lowered.translate(_FOLD)


@dataclass(frozen=True)
class Analysis:
    """What one message contains: counts of words, sentences and questions, and `code`, each
    kind of code found (1, or the number of fenced blocks for `fenced`)."""

    text: str
    prose: str  # folded text with code, URLs and numbers replaced by placeholders
    words: tuple[str, ...]  # of the first PROSE_SAMPLE characters of prose
    word_count: int
    char_count: int
    sentences: int
    questions: int
    list_items: int
    tech_terms: int
    code: dict[str, int] = field(default_factory=dict)
    code_lines: int = 0
    language: str = "unknown"
    emoji: int = 0

    @property
    def tech_density(self) -> float:
        return self.tech_terms / self.word_count if self.word_count else 0.0

    @property
    def has_code(self) -> bool:
        return bool(self.code)


def _language(words: tuple[str, ...], raw: str) -> str:
    pt = sum(map(_PT_WORDS.__contains__, words))
    en = sum(map(_EN_WORDS.__contains__, words))
    if any(map(raw.__contains__, "ãõçâêôáéíóú")):
        pt += 2
    if pt == en == 0:
        return "unknown"
    if pt and en and min(pt, en) / max(pt, en) > 0.5:
        return "mixed"
    return "pt" if pt > en else "en"


def _count(text: str, markers: tuple[str, ...]) -> int:
    return sum(map(text.count, markers))


def _at_least(text: str, markers: tuple[str, ...], n: int) -> bool:
    """`_count(text, markers) >= n`, stopping once it is known."""
    total = 0
    for m in markers:
        total += text.count(m)
        if total >= n:
            return True
    return False


_TRACE_ANCHORS = ("Error", "Exception", "Traceback", "panic:", "\tat ", "    at ", "fault", "Caused by")
_SHELL_COMMANDS = frozenset(
    {"sudo", "apt-get", "apt", "kubectl", "docker", "npm", "npx", "pip", "pip3", "yarn", "curl", "chmod", "git", "$"}
)
_SQL_KEYWORDS = frozenset({"select", "insert", "delete", "create", "alter"})
_DIFF_ANCHORS = ("\n+++ ", "\n@@ -", "diff --git")


def _detect_code(text: str, lowered: str, tokens: set[str], prose_raw: str) -> dict[str, int]:
    """Each kind of code in the text (1: present). Only presence is read, by the models and the
    reasons alike, so each test stops at its first sign."""
    found: dict[str, int] = {}
    if any(map(text.__contains__, _TRACE_ANCHORS)) and any(map(text.__contains__, _TRACE_MARKERS)):
        found["stack_trace"] = 1
    if tokens & _SHELL_COMMANDS and any(map(lowered.__contains__, _SHELL_MARKERS)):
        found["shell"] = 1
    if (
        tokens & _SQL_KEYWORDS
        and any(map(lowered.__contains__, _SQL_STRONG))
        and any(map(lowered.__contains__, _SQL_CLAUSES))  # "select" in prose has no query around it
    ):
        found["sql"] = 1
    if "\n" in text and any(map(text.__contains__, _DIFF_ANCHORS)):
        found["diff"] = 1
    if "`" in prose_raw and _INLINE.search(prose_raw):
        found["inline"] = 1
    if (('{"' in text or '{ "' in text) and '":' in text) or ("\n" in text and ":" in text and _yaml_lines(text, 2)):
        found["json_yaml"] = 1
    if _has_path(text, lowered):
        found["file_path"] = 1
    return found


def _yaml_lines(text: str, n: int) -> bool:
    """Are there at least `n` `key: value` lines?"""
    seen = 0
    for line in text.split("\n"):
        if ":" in line and _YAML_LINE.match(line):
            seen += 1
            if seen >= n:
                return True
    return False


def _has_path(text: str, lowered: str) -> bool:
    """A file name with a known extension, or a directory-like path outside a link."""
    if "." in text and _FILE_EXT.search(lowered):
        return True
    if "/" not in text:
        return False
    paths = len(_DIR_PATH.findall(text))
    if paths and ("http" in text or "www." in text):
        paths -= len(_URL.findall(text))
    return paths > 0


def _split_fences(text: str) -> tuple[list[str], str]:
    """(fenced code blocks, the prose with each block replaced by a `_code_` placeholder)."""
    if "```" not in text:
        return [], text
    parts = text.split("```")
    return parts[1::2], " _code_ ".join(parts[0::2])


def _list_items(prose: str) -> int:
    if "\n" not in prose:
        return 0
    count = 0
    for line in prose.split("\n"):
        head = line.lstrip()[:4]
        if (head[:1] in ("-", "*", "•") and head[1:2] == " ") or (
            head[:1].isdigit() and (head[1:2] in (".", ")") or (head[1:2].isdigit() and head[2:3] in (".", ")")))
        ):
            count += 1
    return count


def analyse(text: str) -> Analysis:
    """Analyse `text` (any size; callers bound it by the contract's limits)."""
    fenced, prose_raw = _split_fences(text)
    lowered = text.lower()
    tokens = lowered.split()
    code = _detect_code(text, lowered, set(tokens), prose_raw)
    code_lines = sum(block.count("\n") for block in fenced)
    if fenced:
        code["fenced"] = len(fenced)
    elif text.count("\n") >= 2 and _at_least(text, _CODE_CHARS, 6):
        # Code pasted without fences: many code tokens over several lines.
        code["unfenced"] = 1
        code_lines = text.count("\n")
    # Words come from the opening of the prose: enough to tell what is asked, and a long
    # paste costs no more than a short one. Counts (length, questions, code) use everything.
    sample = prose_raw[:PROSE_SAMPLE]
    folded = fold(sample)
    if "http" in folded or "www." in folded:
        folded = _URL.sub(" _url_ ", folded)
    words = tuple(_WORD.findall(folded))
    emoji = len(_EMOJI.findall(sample)) if not sample.isascii() else 0
    return Analysis(
        text=text,
        prose=folded,
        words=words,
        word_count=len(tokens),
        char_count=len(text),
        sentences=_count(prose_raw.rstrip(), _SENTENCE_ENDS) + 1 if words else 0,
        questions=prose_raw.count("?"),
        list_items=_list_items(prose_raw),
        tech_terms=sum(map(_TECH_TERMS.__contains__, words)),
        code=code,
        code_lines=code_lines,
        language=_language(words, "" if sample.isascii() else sample.lower()),
        emoji=emoji,
    )
