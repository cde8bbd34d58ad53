"""Chunking, keywords and file reading of the Knowledge service (no model needed)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from services.knowledge import keywords
from services.knowledge.chunking import Chunker, approximate_tokens
from services.knowledge.documents import SkippedFile, discover, read_document
from services.runtime import config

DOC = """# Trocas e devoluções

Você pode trocar qualquer produto em até 30 dias. O produto deve estar sem uso.

## Como pedir a troca

Acesse **Meus pedidos**, escolha o item e clique em Trocar. A coleta é gratuita.

Depois da coleta, a troca sai em até 5 dias úteis.

## Reembolso

O reembolso no Pix cai em até 2 dias úteis; no cartão, na próxima fatura.
"""


def chunker(max_tokens: int = 40, overlap: int = 10) -> Chunker:
    return Chunker(approximate_tokens, max_tokens, overlap)


def test_passages_follow_headings_and_map_back_to_the_text() -> None:
    passages = chunker(200, 20).chunk(DOC)
    assert [p.headings for p in passages] == [
        ("Trocas e devoluções",),
        ("Trocas e devoluções", "Como pedir a troca"),
        ("Trocas e devoluções", "Reembolso"),
    ]
    for p in passages:
        assert DOC[p.start : p.end] == p.text
    assert "Reembolso" not in passages[1].text  # a passage never crosses a heading
    assert passages[2].text.startswith("## Reembolso")


def test_long_sections_are_cut_under_the_budget_with_overlap() -> None:
    sentences = [f"Sentence number {i} says something about delivery times and carriers." for i in range(60)]
    text = "# Long\n\n" + " ".join(sentences)
    c = chunker(60, 15)
    passages = c.chunk(text)
    assert len(passages) > 5
    for p in passages:
        assert approximate_tokens([p.text])[0] <= 60 + 2  # the heading block may ride along
        assert text[p.start : p.end] == p.text
    body = [p for p in passages if "Sentence" in p.text]
    for a, b in itertools.pairwise(body):
        assert b.start < a.end, "consecutive passages of a section share text"
    covered = set()
    for p in passages:
        covered.update(range(p.start, p.end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


def test_a_run_without_sentence_breaks_is_cut_at_words_never_inside_one() -> None:
    words = [f"palavra{i}" for i in range(500)]
    text = " ".join(words)
    passages = chunker(50, 0).chunk(text)
    assert len(passages) >= 10
    seen = []
    for p in passages:
        seen.extend(p.text.split())
    assert seen == words


def test_an_overlong_word_is_cut_so_no_passage_is_over_the_budget() -> None:
    text = "intro " + "😀" * 1000 + " " + "QUJD" * 300 + " outro"
    c = chunker(50, 0)
    passages = c.chunk(text)
    assert all(approximate_tokens([p.text])[0] <= 50 for p in passages)
    assert "".join(p.text.replace(" ", "") for p in passages) == text.replace(" ", "")


def test_chunk_ids_are_stable_and_change_with_content() -> None:
    a = chunker().chunk(DOC)
    b = chunker().chunk(DOC)
    assert [p.chunk_id("doc") for p in a] == [p.chunk_id("doc") for p in b]
    changed = chunker().chunk(DOC.replace("30 dias", "60 dias"))
    assert a[0].chunk_id("doc") != changed[0].chunk_id("doc")
    assert a[-1].chunk_id("doc") == changed[-1].chunk_id("doc")


def test_unicode_offsets_are_code_points() -> None:
    text = "# 表情 😀\n\nÀ prova de emoji 🚚📦 e acentos: ação, pão.\n\n" + "日本語のテキスト。" * 3
    for p in chunker().chunk(text):
        assert text[p.start : p.end] == p.text


def test_empty_or_blank_text_has_no_passages() -> None:
    assert chunker().chunk("") == []
    assert chunker().chunk("\n\n   \n") == []


def test_bad_budgets_are_refused() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        Chunker(approximate_tokens, 4, 0)
    with pytest.raises(ValueError, match="overlap_tokens"):
        Chunker(approximate_tokens, 100, 60)


def test_keywords_fold_accents_keep_digits_and_drop_function_words() -> None:
    assert keywords.terms("Devolução em até 30 DIAS, não é?") == ["devolucao", "30", "dias"]


def test_synonyms_cross_languages() -> None:
    syn = keywords.Synonyms.load(config.REPO_ROOT / "config" / "synonyms.yaml")
    expanded = syn.expand(["senha"])
    assert expanded["senha"] == 1.0
    assert expanded.get("password") == syn.expansion_weight
    q = keywords.query_vector("esqueci minha senha", syn)
    assert keywords.term_id("password") in q.indices


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("qto tempo demora pra chegar no nordeste?", "pt"),
        ("Você pode devolver um produto em até 7 dias após o recebimento.", "pt"),
        ("vcs entregam em lisboa?", "pt"),
        ("How long does shipping to Lisbon take?", "en"),
        ("my card got declined twice, what can I do", "en"),
        ("", ""),
        ("🙂🙂", ""),
        ("SELECT 1;", ""),
        ("a e no do me as", ""),  # words both languages use tell nothing
        ("Wo ist meine Bestellung?", ""),
    ],
)
def test_a_passage_or_question_says_its_language_by_its_function_words(text: str, lang: str) -> None:
    """What the cross-language boost compares; a text that does not say (German here) gets no boost."""
    assert keywords.language(text) == lang


def test_synonym_file_errors_say_what_to_fix(tmp_path: Path) -> None:
    bad = tmp_path / "s.yaml"
    bad.write_text("groups: nope\n")
    with pytest.raises(ValueError, match="groups"):
        keywords.Synonyms.load(bad)
    bad.write_text("groups:\n  - [ok, fine]\n  - [1, 2]\n")
    with pytest.raises(ValueError, match=r"groups\[1\]"):
        keywords.Synonyms.load(bad)


def test_document_vector_weights_repeated_terms_more_but_saturates() -> None:
    once = keywords.document_vector("boleto pagamento")
    many = keywords.document_vector("boleto boleto boleto boleto pagamento")
    tid = keywords.term_id("boleto")
    w1 = once.values[once.indices.index(tid)]
    w4 = many.values[many.indices.index(tid)]
    assert w1 < w4 < 4 * w1


def test_reading_markdown_html_and_text(tmp_path: Path) -> None:
    root = tmp_path / "kb"
    (root / "pay").mkdir(parents=True)
    (root / "pay" / "pix.pt.md").write_text(
        "---\nlang: pt\ntitle: Pix rápido\n---\n# Ignored heading\n\nPague com Pix.\n"
    )
    (root / "faq.html").write_text(
        "<html><head><title>FAQ</title><script>evil()</script></head><body><h1>Perguntas</h1>"
        "<p>Primeiro &amp; segundo.</p><ul><li>Um</li><li>Dois</li></ul></body></html>"
    )
    (root / "notes.txt").write_text("Plain text notes.\n")
    (root / "image.png").write_bytes(b"\x89PNG")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.md").write_text("# secret\n")
    files = list(discover([root]))
    assert [f.relative_to(root).as_posix() for f, _ in files] == ["faq.html", "notes.txt", "pay/pix.pt.md"]
    docs = {d.id: d for d in (read_document(f, r) for f, r in files)}
    assert set(docs) == {"faq", "notes", "pay/pix.pt"}
    pix = docs["pay/pix.pt"]
    assert (pix.title, pix.metadata["lang"], pix.metadata["format"]) == ("Pix rápido", "pt", "markdown")
    faq = docs["faq"]
    assert faq.title == "FAQ"
    assert "evil" not in faq.text and "# Perguntas" in faq.text and "Primeiro & segundo." in faq.text
    assert "- Um" in faq.text
    assert docs["notes"].title == "notes"


def test_unreadable_files_are_skipped_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "latin1.md").write_bytes("# Ação\n".encode("latin-1"))
    (tmp_path / "empty.md").write_text("\n\n")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(SkippedFile, match="not UTF-8"):
        read_document(tmp_path / "latin1.md")
    with pytest.raises(SkippedFile, match="no text"):
        read_document(tmp_path / "empty.md")
    with pytest.raises(SkippedFile, match="not Markdown"):
        read_document(tmp_path / "data.csv")
