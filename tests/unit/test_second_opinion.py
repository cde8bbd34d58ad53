"""The Router's slow path: asked only when the fast models are unsure, heard in the decision and
its reasons, bounded whatever the message, and switched by config."""

from __future__ import annotations

import json

import pytest

from services.router import complexity, intent
from services.router.policy import Router
from services.router.second_opinion import MODEL_PATH, SecondOpinion
from services.runtime import config
from services.runtime.config import ConfigError

# Many facts about one problem: medium by the labelling guide; the fast path leans high at 0.54.
UNSURE = (
    "meu pedido ta parado em 'aguardando pagamento' mas o pix foi pago na hora, tenho o comprovante aqui. "
    "ja faz 2 dias. numero do pedido BR-552019"
)


@pytest.fixture(scope="module")
def second() -> SecondOpinion:
    return SecondOpinion.load()


@pytest.fixture(scope="module")
def router(second: SecondOpinion) -> Router:
    return Router.load(second=second)


def test_a_sure_decision_stays_on_the_fast_path(router: Router) -> None:
    for text in ("Oi! Vocês aceitam Pix?", "Where is my order #4411?", "hello there"):
        d = router.decide(text)
        assert not d.second_opinion
        assert not any(r.startswith("second opinion") for r in d.reasons)


def test_an_unsure_decision_is_decided_with_the_second_opinion_and_says_so(router: Router) -> None:
    alone = Router.load().decide(UNSURE)
    d = router.decide(UNSURE)
    assert (alone.complexity, alone.tier, alone.second_opinion) == ("high", 3, False)
    assert (d.complexity, d.tier, d.second_opinion) == ("medium", 2, True)
    (reason,) = [r for r in d.reasons if r.startswith("second opinion asked")]
    # Both opinions are named: what the fast path guessed and what the embedding says.
    assert "fast path unsure" in reason and "complexity high 0.5" in reason
    assert "embedding says intent support" in reason and "complexity medium" in reason
    # The fast path's evidence is still there, next to it.
    assert any(r.startswith("complexity medium") for r in d.reasons)
    assert any(r.startswith("intent support") and "pedido" in r for r in d.reasons)
    assert d.to_json()["second_opinion"] is True


def test_the_service_path_and_the_in_process_path_decide_alike(router: Router, second: SecondOpinion) -> None:
    look = router.look(UNSURE)
    assert router.wants_second_opinion(look)
    assert router.conclude(look, "vip", 0, second.embed(UNSURE)) == router.decide(UNSURE, "vip")


@pytest.mark.parametrize(
    "text",
    ["", "\x00\x00", "🙂" * 400, "x" * 200_000, "ação " * 20_000, "SELECT * FROM t; " * 500, "\u202e" + "a" * 50],
    ids=["empty", "nul", "emoji", "one-huge-word", "many-words", "sql", "bidi"],
)
def test_any_message_gets_a_bounded_opening_and_a_decision(second: SecondOpinion, text: str) -> None:
    always = Router.load(second=SecondOpinion.load(gate=1.0))
    opening = second.opening(text)
    assert len(opening) <= 160
    assert len(opening.split()) <= second.head_length
    d = always.decide(text)
    assert d.second_opinion and 1 <= d.tier <= 4


def test_gate_zero_never_asks_and_gate_one_always_asks() -> None:
    never, always = Router.load(second=SecondOpinion.load(gate=0.0)), Router.load(second=SecondOpinion.load(gate=1.0))
    assert not never.decide(UNSURE).second_opinion
    assert always.decide("hello there").second_opinion


def _tree(**second_opinion: object) -> dict[str, object]:
    tree = config.load(environ={})
    tree["router"] = {**config.section(tree, "router"), "second_opinion": second_opinion}
    return tree


def test_config_switches_it_off_and_checks_its_values() -> None:
    assert Router.from_config(_tree(enabled=False)).second is None
    on = Router.from_config(_tree(enabled=True, gate=0.6, mix=0.25, threads=1, max_waiting=2)).second
    assert on is not None and (on.gate, on.mix, on.threads, on.max_waiting) == (0.6, 0.25, 1, 2)
    with pytest.raises(ConfigError, match=r"router.second_opinion.*gate"):
        Router.from_config(_tree(gate=1.5))
    with pytest.raises(ConfigError, match="unknown key"):
        config.check_keys(_tree(enabled=True, temperature=2))  # type: ignore[attr-defined]


async def test_a_burst_of_unsure_messages_never_queues_past_max_waiting() -> None:
    """48 unsure messages at once on the Router service's path: `max_waiting` of them wait for the
    embedding, the rest are decided at once on the fast models, and each decision says which."""
    import asyncio

    from services.router.servicer import Caller, RouterServicer

    async def no_generation(*_: object, **__: object) -> None:
        raise AssertionError("Route never generates")

    router = Router.load(second=SecondOpinion.load(max_waiting=3))
    servicer = RouterServicer(router, no_generation, 30.0)  # type: ignore[arg-type]
    decisions = await asyncio.gather(*(servicer._decide(f"{UNSURE} #{i}", 0, Caller()) for i in range(48)))
    heard = [d for d in decisions if d.second_opinion]
    skipped = [
        d for d in decisions if any(r.startswith("second opinion skipped: 3 already waiting") for r in d.reasons)
    ]
    assert len(heard) == 3 and len(skipped) == 45
    assert all(1 <= d.tier <= 4 for d in decisions)
    # Once the queue has drained, the next unsure message is heard again.
    assert (await servicer._decide(UNSURE, 0, Caller())).second_opinion
    off = RouterServicer(Router.load(second=SecondOpinion.load(max_waiting=0)), no_generation, 30.0)  # type: ignore[arg-type]
    assert not (await off._decide(UNSURE, 0, Caller())).second_opinion


def test_heads_read_the_opening_length_they_were_trained_on(second: SecondOpinion) -> None:
    data = json.loads(MODEL_PATH.read_text(encoding="utf-8"))
    assert data["embedding"] == "use-multilingual-v3" and second.head_length == data["head_words"]
    text = "Please write a detailed migration plan for moving our Django monolith to services " * 3
    openings = {words: SecondOpinion.from_json({**data, "head_words": words}).opening(text) for words in (6, 24)}
    assert openings[6] == "Please write a detailed migration plan"
    assert len(openings[24].split()) == 24 and openings[24].startswith(openings[6])


def test_heads_trained_on_multilingual_e5_small_still_load_and_read_its_tokens() -> None:
    """A `tiermesh train-router` bundle of the release before names e5 and counts e5 tokens."""
    names = ["length"]
    zero = {"weights": [[0.0] * 6 for _ in range(384 + len(names))], "bias": [0.0] * 6}
    data = {
        "embedding": "multilingual-e5-small",
        "head_tokens": 6,
        "features": names,
        "intent": {"classes": list(intent.INTENTS), **zero},
        "complexity": {"classes": list(complexity.LEVELS), "weights": [[0.0] * 3] * (384 + 1), "bias": [0.0] * 3},
    }
    heads = SecondOpinion.from_json(data)
    assert heads.engine.name == "multilingual-e5-small" and heads.head_length == 6
    text = "Please write a detailed migration plan for moving our Django monolith to services"
    opening = heads.opening(text)
    assert heads._model().token_count(opening, True) <= 6 + 3 and text.startswith(opening)
    opinion = heads.opinion(heads.embed(text), {"length": 1.0})
    assert opinion.intent == pytest.approx([1 / 6] * 6)  # zero weights: no opinion either way
    with pytest.raises(ValueError, match="use-multilingual-v3"):
        SecondOpinion.from_json({**data, "embedding": "some-other-model"})
