"""Grounded answers through the real mesh: the sample help centre in Knowledge, chats through Envoy."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.knowledge.v1 import knowledge_service_pb2 as kpb
from tiermesh.knowledge.v1 import knowledge_service_pb2_grpc as kpb_grpc
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from services.cli.knowledge import collect, ingest_documents
from services.runtime import config
from tests.integration.mesh import Mesh, start_mesh
from tests.integration.test_observability import scrape, value

pytestmark = pytest.mark.integration

HELPCENTER = config.REPO_ROOT / "data" / "knowledge" / "helpcenter"
PIX_QUESTION = "Como faço para pagar com Pix? Quanto tempo leva para confirmar?"


@pytest.fixture(scope="module")
async def grounded(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    data_dir: Path = tmp_path_factory.mktemp("grounded")
    m = await start_mesh(
        data_dir,
        ["simulator", "inference", "knowledge", "router", "ratelimit", "envoy"],
        TIERMESH_SIMULATOR__TOKEN_DELAY_MS="5",
        # A stalled Knowledge must not hold a chat for long.
        TIERMESH_ROUTER__KNOWLEDGE__DEADLINE_MS="500",
    )
    docs, skipped = collect([str(HELPCENTER)], lambda _: None)
    assert len(docs) == 24 and skipped == 0
    async with m.channel("knowledge") as channel:
        n, chunks = await ingest_documents(channel, "default", docs, lambda _: None)
    assert n == 24 and chunks > 24
    yield m
    await m.sup.stop()


async def chat(mesh: Mesh, text: str) -> list[pb.ChatResponse]:
    async with mesh.edge() as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        request = pb.ChatRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=text)], bypass_cache=True)
        return [e async for e in stub.Chat(request, timeout=30, metadata=mesh.auth())]


def kinds(events: list[pb.ChatResponse]) -> list[str]:
    return [str(e.WhichOneof("event")) for e in events]


async def test_answer_streams_citations_before_tokens_and_the_prompt_holds_the_passages(grounded: Mesh) -> None:
    knowledge_before, router_before = await scrape(grounded, "knowledge"), await scrape(grounded, "router")
    events = await chat(grounded, PIX_QUESTION)
    order = kinds(events)
    assert order[0] == "decision" and order[-1] == "done"
    n_cited = order.count("citation")
    assert n_cited >= 1
    assert order[1 : 1 + n_cited] == ["citation"] * n_cited, "every citation comes before the first token"
    assert order.count("delta") > 1
    citations = [e.citation for e in events if e.HasField("citation")]
    # The Pix article is cited (failed-payments.en, whose section on expired Pix codes answers
    # "how long", may rank beside it: one help centre, two languages).
    (pix,) = [ct for ct in citations if ct.document_id == "pagamento-com-pix.pt"]
    assert pix.title == "Pagamento com Pix"
    assert {ct.document_id for ct in citations} <= {"pagamento-com-pix.pt", "failed-payments.en", "boleto-bancario.pt"}
    assert [ct.index for ct in citations] == list(range(1, n_cited + 1))
    assert all(0 < ct.score <= 1 and ct.chunk_ids for ct in citations)
    done = events[-1].done
    assert not done.knowledge_unavailable

    # What the model was given: the retrieved passages, framed, just before the question.
    async with grounded.channel("knowledge") as channel:
        found = await kpb_grpc.KnowledgeServiceStub(channel).Search(
            kpb.SearchRequest(collection="default", query=PIX_QUESTION, top_k=4, min_score=0.45), timeout=10
        )
    record = await grounded.sim_record(events[0].decision.request_id)
    messages = record["messages"]
    assert messages[-1] == {"role": "user", "content": PIX_QUESTION}
    context = messages[-2]
    assert context["role"] == "system"
    framed = re.search(r"<knowledge-([0-9a-f]{24})>", context["content"])
    assert framed is not None, context["content"][:300]
    b = framed.group(1)  # the frame's boundary: the passages' tags all carry it
    assert f"</knowledge-{b}>" in context["content"]
    tag = f'<document-{b} index="{pix.index}" id="pagamento-com-pix.pt" title="Pagamento com Pix">'
    assert tag in context["content"]
    assert found.chunks[0].chunk_id in citations[0].chunk_ids
    assert found.chunks[0].text in context["content"]

    # Both sides counted it.
    knowledge_after, router_after = await scrape(grounded, "knowledge"), await scrape(grounded, "router")
    searches = "tiermesh_grpc_requests_total"
    assert value(knowledge_after, searches, method="/tiermesh.knowledge.v1.KnowledgeService/Search", code="OK") > value(
        knowledge_before, searches, method="/tiermesh.knowledge.v1.KnowledgeService/Search", code="OK"
    )
    grounded_outcomes = "tiermesh_knowledge_searches_total"
    assert value(router_after, grounded_outcomes, outcome="grounded") == (
        value(router_before, grounded_outcomes, outcome="grounded") + 1
    )


async def test_a_question_two_articles_answer_cites_both_whatever_their_language(grounded: Mesh) -> None:
    """Asked in Portuguese about shipping to Lisbon and its price: the price article (Portuguese)
    ranks first with all its passages, the Portugal article (English) right after. The prompt
    takes at most two passages of one article, so both articles reach the model and are cited."""
    question = "vcs entregam em lisboa? quanto custa o frete?"
    events = await chat(grounded, question)
    cited = [e.citation.document_id for e in events if e.HasField("citation")]
    assert cited[:2] == ["frete-e-frete-gratis.pt", "shipping-to-portugal.en"], cited
    assert all(len(e.citation.chunk_ids) <= 2 for e in events if e.HasField("citation"))
    record = await grounded.sim_record(events[0].decision.request_id)
    assert record["messages"][-2]["content"].count('id="shipping-to-portugal.en"') == 1


async def test_questions_outside_the_knowledge_intents_are_not_grounded(grounded: Mesh) -> None:
    events = await chat(grounded, "olá, tudo bem?")
    assert events[0].decision.intent == c.INTENT_GREETING
    assert "citation" not in kinds(events)
    record = await grounded.sim_record(events[0].decision.request_id)
    assert [m["role"] for m in record["messages"]] == ["user"]
    assert not events[-1].done.knowledge_unavailable


async def test_a_question_the_knowledge_base_does_not_cover_gets_no_citations(grounded: Mesh) -> None:
    events = await chat(grounded, "What is the boiling point of water on Mount Everest?")
    assert events[0].decision.intent == c.INTENT_TECHNICAL  # an intent that searches
    assert "citation" not in kinds(events)
    assert not events[-1].done.knowledge_unavailable
    record = await grounded.sim_record(events[0].decision.request_id)
    assert "<knowledge-" not in str(record["messages"])


async def test_chats_keep_working_when_knowledge_stalls_or_stops(grounded: Mesh) -> None:
    proc = grounded.sup["knowledge"].proc
    assert proc is not None and proc.returncode is None
    os.kill(proc.pid, signal.SIGSTOP)  # alive but silent: the search times out
    try:
        stalled = await chat(grounded, PIX_QUESTION)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert "citation" not in kinds(stalled) and kinds(stalled).count("delta") > 1
    assert stalled[-1].done.knowledge_unavailable
    assert stalled[-1].done.usage.completion_tokens > 0
    record = await grounded.sim_record(stalled[0].decision.request_id)
    assert [m["role"] for m in record["messages"]] == ["user"]

    # Back: grounded again.
    assert "citation" in kinds(await chat(grounded, PIX_QUESTION))

    await grounded.sup.stop_part(grounded.sup["knowledge"])
    stopped = await chat(grounded, PIX_QUESTION)
    assert "citation" not in kinds(stopped) and kinds(stopped).count("delta") > 1
    assert stopped[-1].done.knowledge_unavailable

    # After failures in a row (3 by default) chats stop asking for a while: answered at once.
    for _ in range(2):
        await chat(grounded, PIX_QUESTION)
    before = value(await scrape(grounded, "router"), "tiermesh_knowledge_searches_total", outcome="skipped")
    paused = await chat(grounded, PIX_QUESTION)
    assert paused[-1].done.knowledge_unavailable and kinds(paused).count("delta") > 1
    after = value(await scrape(grounded, "router"), "tiermesh_knowledge_searches_total", outcome="skipped")
    assert after == before + 1
