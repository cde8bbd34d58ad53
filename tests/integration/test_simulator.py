"""The provider simulator speaks OpenAI's chat completions protocol and fails on request."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.integration.mesh import Mesh, start_mesh

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def sim(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    m = await start_mesh(tmp_path_factory.mktemp("sim"), ["simulator"], TIERMESH_SIMULATOR__TOKEN_DELAY_MS="0")
    yield m
    await m.sup.stop()


def body(model: str = "sim-fast", **kw: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Olá! Qual é o prazo de entrega?"}], **kw}


async def sse_events(resp: httpx.Response) -> list[Any]:
    out: list[Any] = []
    async for line in resp.aiter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "", f"unexpected SSE line {line!r}"
    return out


async def test_streaming_matches_openai_chunks_with_usage_last(sim: Mesh) -> None:
    async with httpx.AsyncClient(base_url=sim.sim_url) as client:
        req = body(stream=True, stream_options={"include_usage": True})
        async with client.stream("POST", "/v1/chat/completions", json=req) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"] == "text/event-stream"
            events = await sse_events(resp)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 48
    assert usage_chunk["usage"]["total_tokens"] == usage_chunk["usage"]["prompt_tokens"] + 48
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1] if c["choices"])
    assert text.startswith("[simulated answer from sim-fast] You asked: “Olá! Qual é o prazo de entrega?”.")


async def test_a_grounded_answer_cites_the_documents_it_was_given(sim: Mesh) -> None:
    knowledge = (
        '<knowledge-ab12>\n<document-ab12 index="1" id="pix" title="Pix">Pix...</document-ab12>\n'
        '<document-ab12 index="2" id="boleto" title="Boleto">Boleto...</document-ab12>\n</knowledge-ab12>'
    )
    grounded = body(max_tokens=40)
    grounded["messages"] = [{"role": "system", "content": knowledge}, *grounded["messages"]]
    async with httpx.AsyncClient(base_url=sim.sim_url) as client:
        plain = (await client.post("/v1/chat/completions", json=body(max_tokens=40))).json()
        cited = (await client.post("/v1/chat/completions", json=grounded)).json()
    assert "Sources:" not in plain["choices"][0]["message"]["content"]
    assert "”. Sources: [1] [2] " in cited["choices"][0]["message"]["content"]


async def test_no_usage_chunk_unless_asked(sim: Mesh) -> None:
    async with (
        httpx.AsyncClient(base_url=sim.sim_url) as client,
        client.stream("POST", "/v1/chat/completions", json=body(stream=True)) as resp,
    ):
        events = await sse_events(resp)
    assert all("usage" not in e for e in events[:-1])


async def test_non_streaming_and_max_tokens(sim: Mesh) -> None:
    async with httpx.AsyncClient(base_url=sim.sim_url) as client:
        resp = await client.post("/v1/chat/completions", json=body(max_tokens=5))
    data = resp.json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 5
    assert data["choices"][0]["message"]["content"].startswith("[simulated answer")


@pytest.mark.parametrize(
    ("model", "headers", "status", "code"),
    [
        ("sim:fault=500", {}, 500, "server_error"),
        ("sim", {"x-sim-fault": "500"}, 500, "server_error"),
        ("sim:fault=429:retry_after=4", {}, 429, "rate_limit_exceeded"),
        ("sim:ctx=10", {}, 400, "context_length_exceeded"),
        ("sim:fault=bogus", {}, 400, "invalid_simulator_setting"),
    ],
)
async def test_injected_http_faults(sim: Mesh, model: str, headers: dict[str, str], status: int, code: str) -> None:
    async with httpx.AsyncClient(base_url=sim.sim_url) as client:
        resp = await client.post("/v1/chat/completions", json=body(model, stream=True), headers=headers)
    assert resp.status_code == status
    assert resp.json()["error"]["code"] == code
    if status == 429:
        assert resp.headers["retry-after"] == "4"


async def test_stream_cut_after_n_tokens(sim: Mesh) -> None:
    received: list[str] = []
    async with httpx.AsyncClient(base_url=sim.sim_url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            async with client.stream("POST", "/v1/chat/completions", json=body("sim:fault=cut:3", stream=True)) as resp:
                async for line in resp.aiter_lines():
                    received.append(line)
    contents = [
        json.loads(line[6:])["choices"][0]["delta"].get("content") for line in received if line.startswith("data: {")
    ]
    assert len([c for c in contents if c]) == 3
    assert "data: [DONE]" not in received


async def test_hang_holds_until_the_client_leaves(sim: Mesh) -> None:
    async with httpx.AsyncClient(base_url=sim.sim_url, timeout=0.5) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/chat/completions", json=body("sim:fault=hang", stream=True))
    deadline = time.monotonic() + 5
    while True:
        records = await sim.sim_records()
        if records[-1]["state"] == "disconnected" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert records[-1]["state"] == "disconnected"


@pytest.mark.parametrize("payload", [b"not json", b"[]", b'{"model": "m"}', b'{"messages": [{"role": "user"}]}'])
async def test_malformed_requests_get_400(sim: Mesh, payload: bytes) -> None:
    async with httpx.AsyncClient(base_url=sim.sim_url) as client:
        resp = await client.post("/v1/chat/completions", content=payload, headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert resp.json()["error"]["message"]
