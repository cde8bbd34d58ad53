"""The lean OpenAI-compatible path and the LiteLLM path behave identically: same text, same usage,
same errors (status, Retry-After, retryable, tokens sent before a cut), against the simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.inference.config import Deployment
from services.inference.provider import Call, ContextTooLong, Piece, Provider, ProviderError
from tests.integration.mesh import Mesh, start_mesh

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def sim(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    m = await start_mesh(tmp_path_factory.mktemp("paths"), ["simulator"], TIERMESH_SIMULATOR__TOKEN_DELAY_MS="0")
    yield m
    await m.sup.stop()


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[Provider]:
    p = Provider(10)
    yield p
    await p.aclose()


def deployment(sim: Mesh, model: str) -> Deployment:
    return Deployment("d", 1, "simulator", model, 1_000_000, 2_000_000, 100_000, api_base=sim.sim_url + "/v1")


async def collect(provider: Provider, path: str, d: Deployment, max_tokens: int = 0) -> list[Piece]:
    call = Call(d, [{"role": "user", "content": "compare paths"}], max_tokens, None, 10, "rid")
    stream = getattr(provider, path)(call)
    return [piece async for piece in stream]


def summary(pieces: list[Piece]) -> tuple[str, str | None, tuple[int | None, int | None]]:
    text = "".join(p.text for p in pieces)
    finish = next((p.finish_reason for p in pieces if p.finish_reason), None)
    usage = next(
        ((p.prompt_tokens, p.completion_tokens) for p in pieces if p.completion_tokens is not None), (None, None)
    )
    return text, finish, usage


@pytest.mark.parametrize("max_tokens", [0, 7])
async def test_same_answer_and_usage_on_both_paths(sim: Mesh, provider: Provider, max_tokens: int) -> None:
    d = deployment(sim, "sim-fast")
    lean = summary(await collect(provider, "_lean", d, max_tokens))
    via_litellm = summary(await collect(provider, "_litellm", d, max_tokens))
    assert lean == via_litellm
    assert lean[1] == ("length" if max_tokens else "stop")
    assert lean[2][1] == (max_tokens or 48)


@pytest.mark.parametrize(
    ("model", "outcome", "status", "retry_after", "retryable"),
    [
        ("sim:fault=500", "HTTP 500", 500, None, True),
        ("sim:fault=429:retry_after=7", "HTTP 429", 429, 7.0, True),
    ],
)
async def test_same_errors_on_both_paths(
    sim: Mesh, provider: Provider, model: str, outcome: str, status: int, retry_after: float | None, retryable: bool
) -> None:
    for path in ("_lean", "_litellm"):
        with pytest.raises(ProviderError) as info:
            await collect(provider, path, deployment(sim, model))
        err = info.value
        assert (err.outcome, err.status, err.retry_after_s, err.retryable) == (
            outcome,
            status,
            retry_after,
            retryable,
        ), path


async def test_context_too_long_on_both_paths(sim: Mesh, provider: Provider) -> None:
    for path in ("_lean", "_litellm"):
        with pytest.raises(ContextTooLong):
            await collect(provider, path, deployment(sim, "sim:ctx=3"))


async def test_a_cut_stream_reports_the_tokens_sent_on_both_paths(sim: Mesh, provider: Provider) -> None:
    for path in ("_lean", "_litellm"):
        pieces: list[Piece] = []
        with pytest.raises(ProviderError) as info:
            async for piece in getattr(provider, path)(
                Call(deployment(sim, "sim:fault=cut:4"), [{"role": "user", "content": "x"}], 0, None, 10, "rid")
            ):
                pieces.append(piece)
        assert info.value.outcome.startswith("stream cut after"), path
        assert info.value.retryable
        # The text that did arrive is the first four tokens, and the error counts them.
        assert "".join(p.text for p in pieces).split() == ["[simulated", "answer", "from", "sim]"], path
        assert info.value.tokens_sent == 4, path


async def test_a_paced_stream_is_read_once_per_flush_interval_with_nothing_lost_or_held_first(sim: Mesh) -> None:
    """A provider sending a token every 20 ms is read as it comes when Inference flushes every
    piece (interval 0), and about once per interval (60 ms here) when it merges: the same text,
    finish and usage, far fewer reads, and the first token still read alone, at once."""
    d = deployment(sim, "sim-fast:delay_ms=20:tokens=30")
    pieces = {}
    for interval in (0.0, 0.06):
        p = Provider(10, flush_interval_s=interval)
        try:
            pieces[interval] = await collect(p, "_lean", d)
        finally:
            await p.aclose()
    each, merged = pieces[0.0], pieces[0.06]
    assert summary(each) == summary(merged)
    each_texts, merged_texts = [p.text for p in each if p.text], [p.text for p in merged if p.text]
    assert len(each_texts) >= 25  # ~one read per token
    assert len(merged_texts) <= len(each_texts) // 2
    assert merged_texts[0] == each_texts[0]  # the first token is not held back for the interval


@pytest.mark.parametrize(
    "bad",
    [
        b'{"choices": [{"delta": {"content": "trunc',
        b"NaN",
        b"\xff\xfe not utf-8",
        b'{"choices": [}',
        b"42",  # JSON, but not a chunk
        b'{"choices": ["a"]}',
        b'{"choices": [{"delta": "text"}]}',
        b'{"choices": [], "usage": {"completion_tokens": [1]}}',
    ],
)
async def test_a_malformed_chunk_is_a_provider_error_after_the_text_before_it(provider: Provider, bad: bytes) -> None:
    """A provider (a real HTTP server on loopback) that sends one good chunk and then one it
    cannot have meant: the good text arrives, then the stream fails as `malformed stream`, which
    the engine treats as the provider's fault (and may fall back), never as a crash."""
    from aiohttp import web

    async def chat(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices": [{"index": 0, "delta": {"content": "hello"}}]}\n\n')
        await resp.write(b"data: " + bad + b"\n\n")
        await resp.write_eof(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    d = Deployment("odd", 1, "openai", "odd-model", 1, 1, 1000, api_base=f"http://127.0.0.1:{port}/v1")
    pieces: list[Piece] = []
    try:
        with pytest.raises(ProviderError) as err:
            call = Call(d, [{"role": "user", "content": "hi"}], 0, None, 10, "rid")
            async for piece in provider._lean(call):
                pieces.append(piece)
    finally:
        await runner.cleanup()
    assert "".join(p.text for p in pieces) == "hello"
    assert err.value.outcome == "malformed stream" and err.value.tokens_sent == 1
    assert "odd sent a malformed stream chunk" in str(err.value)
