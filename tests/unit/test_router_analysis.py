"""Message analysis, complexity levels and intent detection, in English and Brazilian Portuguese."""

from __future__ import annotations

import json

import pytest

from services.router import intent as intent_mod
from services.router.complexity import MODEL_PATH as CX_MODEL
from services.router.features import analyse, fold
from services.router.intent import MODEL_PATH as INTENT_MODEL
from services.router.intent import IntentClassifier
from services.router.policy import Router
from services.router.second_opinion import MODEL_PATH as SECOND_OPINION_MODEL
from services.router.train import data_fingerprint, load_rows

PY_TRACE = """Traceback (most recent call last):
  File "/srv/app/checkout.py", line 88, in pay
    resp = client.charges.create(amount=total)
  File "/srv/venv/lib/python3.11/site-packages/shop/api.py", line 41, in create
    raise ApiError(body["error"])
shop.errors.ApiError: amount must be an integer"""


@pytest.fixture(scope="module")
def router() -> Router:
    return Router.load()


def test_fold_strips_accents_case_and_digits() -> None:
    assert fold("Não PAGUEI o PEDIDO nº 4521, ação já!") == "nao paguei o pedido no 0000, acao ja!"
    assert fold("Привет 42") == "привет 00"  # other scripts keep their letters


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("```python\nprint('hi')\n```", {"fenced"}),
        ("why does `len(None)` fail?", {"inline"}),
        (PY_TRACE, {"stack_trace", "file_path"}),
        (
            'Exception in thread "main" java.lang.NullPointerException\n\tat com.shop.Cart.total(Cart.java:42)',
            {"stack_trace"},
        ),
        ("SELECT id, total FROM orders WHERE status = 'paid' ORDER BY created_at", {"sql"}),
        ("run sudo apt-get install redis then curl -X POST localhost", {"shell"}),
        ('{"amount": 100, "currency": "BRL"}', {"json_yaml"}),
        ("server:\n  port: 8080\n  host: 0.0.0.0\n", {"json_yaml"}),
        ("--- a/app.py\n+++ b/app.py\n@@ -1,2 +1,2 @@\n-x = 1\n+x = 2", {"diff", "file_path"}),
        ("the config is in /etc/shop/settings.yaml", {"file_path"}),
    ],
)
def test_code_of_each_kind_is_named(text: str, kinds: set[str]) -> None:
    assert kinds <= set(analyse(text).code)


@pytest.mark.parametrize(
    "text",
    [
        "please update my card and select the annual plan",
        "quero deletar minha conta e criar outra",
        "my order was delivered from the wrong store",
    ],
)
def test_prose_that_mentions_code_words_is_not_code(text: str) -> None:
    assert analyse(text).code == {}


def test_language_is_recognised() -> None:
    assert analyse("Olá, vocês entregam no sábado?").language == "pt"
    assert analyse("Hi, do you deliver on Saturday?").language == "en"
    assert analyse("oi, can you help me com meu pedido? the order is late").language == "mixed"


def test_complexity_rises_across_the_boundaries(router: Router) -> None:
    low = "How do I reset my password?"
    medium = (
        "I tried to reset my password twice today but the email never arrives, and I already checked spam. "
        "Is there another way to get into my account?"
    )
    high = (
        "We are migrating our checkout to your API and need help with three things. First, the webhook "
        "signature check fails in production but not in staging. Second, refunds created through the API "
        "do not show in the dashboard. Third, we want a strategy for retries and idempotency. Here is the "
        "error we see:\n" + PY_TRACE + "\nCan you compare the options and recommend an approach?"
    )
    levels = [router.complexity.analyse(analyse(t)) for t in (low, medium, high)]
    assert [c.level for c in levels] == ["low", "medium", "high"]
    assert levels[0].score < levels[1].score < levels[2].score
    assert "contains" in ", ".join(levels[2].reasons) and "a stack trace" in ", ".join(levels[2].reasons)


def test_pt_br_complexity_boundaries(router: Router) -> None:
    assert router.decide("oi, qual o horario de atendimento?").complexity == "low"
    medium = (
        "comprei um tenis na semana passada e veio o numero errado, ja abri um chamado mas ninguem "
        "respondeu ainda. como faço a troca?"
    )
    assert router.decide(medium).complexity == "medium"
    high = "preciso de uma análise comparando três estratégias de precificação para nossa loja: " + " ".join(
        ["considerando margem, frete, concorrência e sazonalidade, com prós e contras de cada uma."] * 4
    )
    assert router.decide(high).complexity == "high"


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("Bom dia! Tudo bem com vocês?", "greeting"),
        ("hey there, thanks a lot!!", "greeting"),
        ("vcs entregam em manaus? qual o prazo?", "faq"),
        ("What is your return policy for shoes?", "faq"),
        ("meu pedido nao chegou e ja passou 15 dias, ninguem me responde", "support"),
        ("I was charged twice for my last order, please refund one", "support"),
        ("quero assinar o plano empresarial pra 50 pessoas, tem desconto?", "sales"),
        ("how much does the pro plan cost per seat if we buy annually?", "sales"),
        ("my webhook handler in node returns 401 when I verify the signature", "technical"),
        ("como faço paginação na api de pedidos usando o sdk python?", "technical"),
        ("escreve um poema sobre o mar pra minha namorada", "other"),
        ("who won the 1970 world cup?", "other"),
    ],
)
def test_intent_in_both_languages(router: Router, text: str, intent: str) -> None:
    assert router.decide(text).intent == intent


def test_accents_and_case_do_not_change_the_intent(router: Router) -> None:
    a = router.intents.scores(analyse("Não recebi meu pedido, já faz uma semana"))
    b = router.intents.scores(analyse("NAO RECEBI MEU PEDIDO, JA FAZ UMA SEMANA"))
    assert a == b


def test_low_confidence_falls_back_to_other(router: Router) -> None:
    strict = IntentClassifier(router.intents.model, min_confidence=0.999)
    result = strict.classify(analyse("hmm ok so about that thing"))
    assert result.label == "other"
    assert result.confidence < 0.999
    d = Router(router.policy, strict, router.complexity).decide("hmm ok so about that thing")
    assert any(r.startswith("intent unclear (best guess") for r in d.reasons)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "😀😀😀🎉",
        "?",
        "```\nfn main() {}\n```",
        "x" * 32_000,
        ("palavra " * 4000).strip(),
        "oi, preciso de help with my pedido please, it's urgente",
        "\u202e\u200b\x00 control chars",
    ],
)
def test_edge_inputs_get_a_decision(router: Router, text: str) -> None:
    d = router.decide(text, "standard")
    assert d.tier in (1, 2, 3, 4) and d.intent in intent_mod.INTENTS and d.reasons


def test_emoji_only_and_code_only(router: Router) -> None:
    emoji = router.decide("😀😀😀🎉")
    assert emoji.complexity == "low" and emoji.tier == 1
    code = router.decide("```python\ndef total(items):\n    return sum(i.price for i in items)\n```\n")
    assert code.intent == "technical"
    huge = router.decide(("Explain this in detail. " * 1400).strip())
    assert huge.complexity == "high"


def test_fast_scoring_equals_the_trained_model(router: Router) -> None:
    for row in load_rows("test")[:80]:
        a = analyse(row["text"])
        fast = router.intents.scores(a)
        slow = router.intents.model.scores(intent_mod.features(a))
        assert fast == pytest.approx(slow, abs=1e-9)


def test_committed_models_were_trained_on_the_committed_data() -> None:
    fingerprint = data_fingerprint(load_rows("train"))
    for path in (INTENT_MODEL, CX_MODEL, SECOND_OPINION_MODEL):
        meta = json.loads(path.read_text(encoding="utf-8"))["meta"]
        assert meta["data_sha256"] == fingerprint, f"{path.name} is stale: run `make train-router`"


@pytest.mark.parametrize(
    "text",
    [
        "oi, tudo bem?",
        "de a e o um the of and",
        "Preciso comparar três arquiteturas de filas para o nosso checkout, com prós e contras",
        "how much is the pro plan for 20 seats?",
    ],
)
def test_evidence_never_cites_a_bare_function_word(router: Router, text: str) -> None:
    from services.router.features import FUNCTION_WORDS

    result = router.intents.classify(analyse(text))
    for item in result.evidence:
        words = item.strip("“”").split()
        assert words and not set(words) <= FUNCTION_WORDS, (text, result.evidence)
    if text.startswith("oi"):
        assert result.evidence  # a greeting is explained by its greeting words
