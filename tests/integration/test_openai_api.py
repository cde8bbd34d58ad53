"""Clients nobody here wrote, against the OpenAI-compatible API through the real edge (Envoy with
its token check and rate limits), the API service, Router, Inference, Analytics and the
simulator, all real processes: the official `openai` package (sync and async, streamed and not)
and `litellm.completion` with tiermesh as an OpenAI-compatible base URL."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import openai
import pytest

from tests.integration.mesh import Mesh, forget_litellm_clients, off_the_minute, start_mesh

pytestmark = pytest.mark.integration

# A standard user may make 3 requests a minute here; vip users (the tests' default) 1000.
STANDARD_PER_MINUTE = 3
LIMITS = (
    "[{key: segment, value: standard, descriptors: [{key: user, rate_limit: {unit: minute, requests_per_unit: "
    f"{STANDARD_PER_MINUTE}}}}}]}},"
    " {key: segment, value: vip, descriptors: [{key: user, rate_limit: {unit: minute, requests_per_unit: 1000}}]},"
    " {key: remote_address, rate_limit: {unit: minute, requests_per_unit: 100000}}]"
)


@dataclass
class Api:
    url: str  # the edge's /v1
    token: str  # a vip user's token, sent as OpenAI's API key
    mesh: Mesh

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
async def api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    mesh: Mesh = await start_mesh(
        tmp_path_factory.mktemp("openai"),
        ["simulator", "inference", "knowledge", "analytics", "router", "openai", "ratelimit", "envoy"],
        TIERMESH_SIMULATOR__TOKEN_DELAY_MS="1",
        TIERMESH_RATELIMIT__CONFIG__DESCRIPTORS=LIMITS,
        TIERMESH_RATELIMIT__TIMEOUT_MS="2000",
    )
    yield Api(f"http://{mesh.target('envoy')}/v1", mesh.token(segment="vip"), mesh)
    await mesh.sup.stop()
    gc.collect()  # a client left open by a test shows here (ResourceWarning), not in a later module


def sync_client(api: Api) -> openai.OpenAI:
    return openai.OpenAI(base_url=api.url, api_key=api.token, max_retries=0)


def async_client(api: Api, key: str = "") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=api.url, api_key=key or api.token, max_retries=0)


async def test_the_sync_sdk_gets_an_answer_with_usage_and_tiermesh_headers(api: Api) -> None:
    def ask() -> openai.types.chat.ChatCompletion:
        with sync_client(api) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": "olá, tudo bem?"}]
            )
        assert raw.headers["x-tiermesh-tier"] == "1" and raw.headers["x-tiermesh-intent"] == "greeting"
        assert raw.headers["x-tiermesh-request-id"] and float(raw.headers["x-tiermesh-cost-usd"]) > 0
        return raw.parse()

    completion = await asyncio.to_thread(ask)
    assert completion.choices[0].message.content and completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


async def test_the_sync_sdk_streams_chunk_by_chunk_and_reads_usage_last(api: Api) -> None:
    def ask() -> list[openai.types.chat.ChatCompletionChunk]:
        with sync_client(api) as client:
            stream = client.chat.completions.create(
                model="tier-2",
                messages=[{"role": "user", "content": "hello there"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            return list(stream)

    chunks = await asyncio.to_thread(ask)
    texts = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert len(texts) >= 2  # streamed in pieces, not one block
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert chunks[0].model_extra is not None and chunks[0].model_extra["tiermesh"]["decision"]["tier"] == 2


async def test_the_async_sdk_streams_and_answers(api: Api) -> None:
    client = async_client(api)
    stream = await client.chat.completions.create(
        messages=[{"role": "user", "content": "how are you?"}], model="auto", stream=True
    )
    text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
    whole = await client.chat.completions.create(messages=[{"role": "user", "content": "how are you?"}], model="auto")
    await client.close()
    assert text and whole.choices[0].message.content


async def test_bad_requests_get_openais_error_object_with_what_to_fix(api: Api) -> None:
    client = async_client(api)
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="gpt-nonexistent", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.code == "model_not_found" and "tier-2" in missing.value.message
    with pytest.raises(openai.BadRequestError) as too_long:  # the contract's limit, enforced by the Router
        await client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x" * 32_001}])
    assert "32000" in too_long.value.message and too_long.value.code == "invalid_value"
    with pytest.raises(openai.BadRequestError) as bad_temperature:
        await client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}], temperature=7)
    assert bad_temperature.value.param == "temperature"
    models = await client.models.list()
    ids = {m.id for m in models.data}
    assert {"auto", "tier-1", "tier-2", "tier-3", "tier-4", "sim-fast", "sim-premium"} <= ids
    await client.close()


async def test_litellm_completion_uses_tiermesh_as_an_openai_compatible_base_url(api: Api) -> None:
    def ask() -> object:
        import litellm

        try:
            return litellm.completion(
                model="openai/auto",
                api_base=api.url,
                api_key=api.token,
                messages=[{"role": "user", "content": "olá"}],
            )
        finally:
            forget_litellm_clients()

    response = await asyncio.to_thread(ask)
    assert response.choices[0].message.content  # type: ignore[attr-defined]
    assert response.usage.completion_tokens > 0  # type: ignore[attr-defined]


async def sse_objects(url: str, body: dict[str, object], headers: dict[str, str]) -> list[object]:
    """The data of every server-sent event of a streamed completion, in order ([DONE] as a string)."""
    out: list[object] = []
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream("POST", url + "/chat/completions", json=body, headers=headers) as resp,
    ):
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                data = line[6:]
                out.append(data if data == "[DONE]" else json.loads(data))
            else:
                assert line == "", f"not a server-sent event line: {line!r}"
    return out


def shape(value: object) -> object:
    """Field names and JSON types, recursively, without the values (and without tiermesh's field)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items()) if k != "tiermesh"}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def grammar(events: list[object]) -> list[str]:
    """Each event by what it carries: role, text, finish, usage, done (runs of text counted once)."""
    out: list[str] = []
    for e in events:
        if e == "[DONE]":
            kind = "done"
        else:
            assert isinstance(e, dict)
            choices = e["choices"]
            if not choices:
                kind = "usage"
            elif choices[0]["finish_reason"]:
                kind = "finish"
            elif "role" in choices[0]["delta"]:
                kind = "role"
            elif choices[0]["delta"].get("content"):
                kind = "text"
            else:
                continue  # an event with only tiermesh's facts (a citation, a restart)
        if not out or out[-1] != kind or kind != "text":
            out.append(kind)
    return out


async def test_the_stream_matches_the_simulators_own_openai_stream_field_by_field(api: Api) -> None:
    body = {
        "messages": [{"role": "user", "content": "hello there"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    ours = await sse_objects(api.url, {**body, "model": "tier-1"}, api.auth)
    theirs = await sse_objects(api.mesh.sim_url + "/v1", {**body, "model": "sim-fast"}, {})
    assert grammar(ours) == grammar(theirs) == ["role", "text", "finish", "usage", "done"]
    ours_shapes = [shape(e) for e in ours]
    theirs_shapes = [shape(e) for e in theirs]
    assert ours_shapes[0] == theirs_shapes[0]  # the role chunk
    assert ours_shapes[-3:] == theirs_shapes[-3:]  # finish, usage, [DONE]
    text_chunk = next(s for s, e in zip(ours_shapes, ours, strict=True) if grammar([e]) == ["text"])
    assert text_chunk == next(s for s, e in zip(theirs_shapes, theirs, strict=True) if grammar([e]) == ["text"])


async def test_the_edge_refuses_a_missing_or_bad_key_with_openais_401(api: Api) -> None:
    for key in ("not-a-token", api.token[:-4] + "AAAA"):
        client = async_client(api, key)
        with pytest.raises(openai.AuthenticationError) as refused:
            await client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
        await client.close()
        assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
        assert refused.value.message  # Envoy's reason, in OpenAI's error object
    async with httpx.AsyncClient() as raw:
        resp = await raw.get(api.url + "/models")
    assert resp.status_code == 401 and resp.json()["error"]["type"] == "invalid_request_error"


async def test_a_rate_limited_caller_gets_429_with_retry_after(api: Api) -> None:
    token = api.mesh.token(segment="standard")
    client = openai.AsyncOpenAI(base_url=api.url, api_key=token, max_retries=0)
    await off_the_minute()
    for _ in range(STANDARD_PER_MINUTE):
        await client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    await client.close()
    assert limited.value.status_code == 429 and limited.value.code == "rate_limit_exceeded"
    retry_after = int(limited.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 60  # seconds until the minute's window resets


async def test_identity_headers_a_client_sends_are_not_believed(api: Api) -> None:
    forged = {**api.auth, "x-tiermesh-user": "someone-else", "x-tiermesh-segment": "enterprise"}
    async with httpx.AsyncClient(timeout=30) as raw:
        resp = await raw.post(
            api.url + "/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": "Explain database sharding"}]},
            headers=forged,
        )
    assert resp.status_code == 200
    decision = resp.json()["tiermesh"]["decision"]
    assert decision["segment"] == "vip"  # the token's, not the forged header's


async def test_an_operator_pins_a_deployment_by_name_and_no_one_else_may(api: Api) -> None:
    operator = openai.AsyncOpenAI(base_url=api.url, api_key=api.mesh.token(role="operator"), max_retries=0)
    raw = await operator.chat.completions.with_raw_response.create(
        model="sim-balanced", messages=[{"role": "user", "content": "hello"}]
    )
    pinned = raw.parse()
    assert raw.headers["x-tiermesh-model"] == "sim-balanced" and raw.headers["x-tiermesh-tier"] == "2"
    assert pinned.model_extra is not None and "pinned" in pinned.model_extra["tiermesh"]["decision"]["reasons"][0]
    with pytest.raises(openai.NotFoundError) as unknown:
        await operator.chat.completions.create(model="sim-nonexistent", messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.code == "model_not_found"
    await operator.close()
    client = async_client(api)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await client.chat.completions.create(model="sim-balanced", messages=[{"role": "user", "content": "hello"}])
    await client.close()
    assert denied.value.status_code == 403 and "operator role" in denied.value.message


async def test_embeddings_come_from_the_knowledge_bases_model_in_either_encoding(api: Api) -> None:
    """The knowledge base's model: multilingual-e5-small and USE side by side (384 + 512 dimensions)."""
    MODEL = "multilingual-e5-small+use-multilingual-v3"  # noqa: N806 - a name the test reads like a constant

    def embed() -> openai.types.CreateEmbeddingResponse:
        with sync_client(api) as client:  # the SDK asks for base64 and decodes it
            return client.embeddings.create(model="auto", input=["Where is my order?", "Onde está meu pedido?"])

    reply = await asyncio.to_thread(embed)
    assert [d.index for d in reply.data] == [0, 1] and reply.model == MODEL
    assert reply.usage.prompt_tokens > 0 and reply.usage.total_tokens == reply.usage.prompt_tokens
    vector = reply.data[0].embedding
    assert len(vector) == 896 and abs(sum(v * v for v in vector) - 1.0) < 1e-3
    async with httpx.AsyncClient(timeout=30) as raw:
        floats = await raw.post(
            api.url + "/embeddings",
            json={"model": MODEL, "input": "Where is my order?", "encoding_format": "float"},
            headers=api.auth,
        )
    assert floats.status_code == 200
    same = floats.json()["data"][0]["embedding"]
    assert max(abs(a - b) for a, b in zip(same, vector, strict=True)) < 1e-5
    client = async_client(api)
    with pytest.raises(openai.NotFoundError) as other_model:
        await client.embeddings.create(model="text-embedding-3-large", input="hi")
    assert other_model.value.code == "model_not_found" and MODEL in other_model.value.message
    for bad, param in (([], "input"), ([[1, 2, 3]], "input"), ([""], "texts[0]"), ("x" * 16_385, "16384")):
        with pytest.raises(openai.BadRequestError) as refused:
            await client.embeddings.create(model="auto", input=bad, encoding_format="float")  # type: ignore[arg-type]
        assert param in str(refused.value.param) + refused.value.message, refused.value.message
    await client.close()


async def test_a_body_over_the_limit_is_413_and_a_wrong_method_405_in_openais_format(api: Api) -> None:
    async with httpx.AsyncClient(timeout=30) as raw:
        huge = await raw.post(
            api.url + "/chat/completions",
            content=b'{"model": "auto", "messages": [{"role": "user", "content": "' + b"x" * (2 << 20) + b'"}]}',
            headers={**api.auth, "content-type": "application/json"},
        )
        wrong = await raw.get(api.url + "/chat/completions", headers=api.auth)
        missing = await raw.post(api.url + "/responses", json={}, headers=api.auth)
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "too_large"
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"
    assert missing.status_code == 404 and "error" in missing.json()
