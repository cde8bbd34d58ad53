"""Calls a deployment's model and yields its answer as text pieces and usage.

Two paths behind one interface, with identical behaviour (pieces, usage, errors):

- OpenAI-compatible endpoints (OpenAI, vLLM, Ollama, Groq, the simulator ...) take a lean path:
  one streamed HTTP request over a shared aiohttp pool, SSE parsed here. LiteLLM would add ~25 ms
  of CPU per streamed call for a translation these endpoints do not need.
- Every other provider (Anthropic, Gemini, Bedrock ...) goes through LiteLLM, which translates.

Each path has one shared connection pool. Nothing here retries: retrying is the engine's job.
LiteLLM (~180 MB and ~2.5 s to import) is loaded only when a deployment needs it: at start when
one is configured, or on the first call otherwise (services/inference/litellm_path.py). Tokens of
an answer whose provider sent no usage are counted with the model's tokenizer
(services/inference/tokens.py on the lean path).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from services.inference import tokens
from services.inference.config import Deployment
from services.runtime.errors import Unavailable

if TYPE_CHECKING:
    from services.inference.litellm_path import LiteLLMPath

LEAN_PROVIDERS = ("simulator", "openai", "openai_compatible")
OPENAI_BASE = "https://api.openai.com/v1"


@dataclass(frozen=True)
class Piece:
    """A piece of the answer (`text`), or the end of it (`finish_reason`, `usage`)."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class Call:
    """One call of a deployment's model, as either path makes it."""

    deployment: Deployment
    messages: Sequence[dict[str, str]]
    max_tokens: int
    temperature: float | None
    timeout_s: float
    request_id: str


class ProviderError(Unavailable):
    """The provider failed: HTTP error, timeout, refused connection, or a stream cut short.

    `retryable` says whether calling again (here or on a fallback) can help; `retry_after_s` is
    the provider's Retry-After; `tokens_sent` how many text pieces had arrived before it failed.
    """

    def __init__(
        self,
        message: str,
        *,
        outcome: str,
        status: int | None = None,
        retry_after_s: float | None = None,
        tokens_sent: int = 0,
        retryable: bool = True,
    ) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.status = status
        self.retry_after_s = retry_after_s
        self.tokens_sent = tokens_sent
        self.retryable = retryable


class ContextTooLong(ProviderError):
    """The conversation does not fit the deployment's context window: only a larger one can help."""


# The failures both paths name the same way.
def too_long(name: str, status: int | None = None) -> ContextTooLong:
    return ContextTooLong(
        f"{name}: the conversation is longer than its context window",
        outcome="context too long",
        status=status,
        retryable=False,
    )


def timed_out(name: str, timeout_s: float, sent: int) -> ProviderError:
    return ProviderError(f"{name} did not answer within {timeout_s:.1f} s", outcome="timeout", tokens_sent=sent)


def cut_short(name: str, sent: int, how: str) -> ProviderError:
    return ProviderError(f"{name} failed: {how}", outcome=f"stream cut after {sent} tokens", tokens_sent=sent)


def broken(name: str, exc: BaseException, sent: int, outcome: str = "connection error") -> ProviderError:
    return ProviderError(f"{name} failed: {type(exc).__name__}: {exc}", outcome=outcome, tokens_sent=sent)


def retry_after(headers: Any) -> float | None:
    raw = (headers or {}).get("retry-after")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


def status_error(name: str, status: int, body: str, retry_after: float | None, sent: int) -> ProviderError:
    code = message = ""
    try:
        err = json.loads(body).get("error", {})
        code, message = str(err.get("code") or ""), str(err.get("message") or "")
    except (ValueError, AttributeError):
        message = body[:200]
    if code == "context_length_exceeded" or "context length" in message.lower():
        return too_long(name, status)
    retryable = status == 429 or status >= 500 or status == 408
    return ProviderError(
        f"{name} failed: HTTP {status}: {message or 'no detail'}",
        outcome=f"HTTP {status}",
        status=status,
        retry_after_s=retry_after,
        tokens_sent=sent,
        retryable=retryable,
    )


def chat_body(
    model: str, messages: Sequence[dict[str, str]], max_tokens: int, temperature: float | None
) -> dict[str, Any]:
    """The OpenAI chat-completions request both paths send (LiteLLM takes the same names)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": list(messages),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if max_tokens:
        body["max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature
    return body


class ReadPacer:
    """Reads a provider that sends a token at a time no more often than text is flushed.

    The text Inference sends on is merged per flush interval anyway (the first piece at once),
    but reading each token as it arrives wakes the process once per token, and on a machine
    where a wake-up costs ~0.2 ms of CPU that is most of a paced answer's cost. Once a stream has
    shown itself paced (more than PACED_GAP_S between two reads that brought text; it stays so),
    reading stops after each read that brought text until the next flush boundary (the first
    text's time plus a whole number of intervals) and the kernel holds what arrives meanwhile;
    at the boundary it is read at once.
    No text waits longer than it would have in the merge, a burst (a fast model, a cache of
    the provider's) is read as it comes, and the end of a paced answer is seen at most one
    interval later."""

    PACED_GAP_S = 0.005

    def __init__(self, interval_s: float, resp: aiohttp.ClientResponse) -> None:
        self.interval_s = interval_s
        self.resp = resp
        self.first = 0.0
        self.last = 0.0
        self.paced = False

    async def after_text(self) -> None:
        if not self.interval_s:
            return
        now = asyncio.get_running_loop().time()
        if not self.first:
            self.first = self.last = now
            return
        if not self.paced:
            self.paced, self.last = now - self.last > self.PACED_GAP_S, now
            if not self.paced:
                return
        connection = self.resp.connection
        transport = connection.transport if connection is not None else None
        if transport is None or transport.is_closing():
            return
        boundary = self.first + (int((now - self.first) / self.interval_s) + 1) * self.interval_s
        transport.pause_reading()
        try:
            await asyncio.sleep(boundary - now)
        finally:
            if not transport.is_closing():
                transport.resume_reading()


class Provider:
    """One shared HTTP pool for every deployment; picks the lean or the LiteLLM path.

    `litellm`: whether a configured deployment takes the LiteLLM path; if so LiteLLM is loaded
    and warmed up by `warm_up`, before the service reports healthy, not on a user's first call.
    """

    def __init__(self, max_connections: int, litellm: bool = False, flush_interval_s: float = 0.0) -> None:
        # The lean path's pool: aiohttp parses HTTP in C (~0.8 ms of CPU per 48-token stream here,
        # against ~2.3 ms with httpx).
        self.max_connections = max_connections
        self.flush_interval_s = flush_interval_s
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=max_connections),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        self.wants_litellm = litellm
        self._litellm_path: LiteLLMPath | None = None

    def litellm_path(self) -> LiteLLMPath:
        """The LiteLLM path, loaded on first use."""
        if self._litellm_path is None:
            from services.inference.litellm_path import LiteLLMPath

            self._litellm_path = LiteLLMPath(self.max_connections)
        return self._litellm_path

    async def warm_up(self) -> bool:
        """Load what the configured deployments need before the first request: the lean path's
        tokenizer always, LiteLLM (and its lazy imports and clients) when a deployment takes it."""
        tokens.count_text(tokens.DEFAULT_MODEL, "warm-up")
        if self.wants_litellm:
            await self.litellm_path().warm_up()
        return True

    async def aclose(self) -> None:
        await self.session.close()
        if self._litellm_path is not None:
            await self._litellm_path.aclose()

    async def check(self, d: Deployment) -> bool:
        """A cheap health probe: GET {api_base}/models answers 200."""
        url = (d.api_base or OPENAI_BASE).rstrip("/") + "/models"
        headers = {"authorization": f"Bearer {d.api_key}"} if d.api_key else {}
        try:
            async with self.session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def count_tokens(self, deployment: Deployment, messages: Sequence[dict[str, str]] | None, text: str | None) -> int:
        """Tokens by the model's tokenizer, for providers that send no usage."""
        if deployment.provider not in LEAN_PROVIDERS:
            return self.litellm_path().count_tokens(deployment.model, messages, text)
        model = deployment.model if deployment.provider == "openai" else tokens.DEFAULT_MODEL
        if text is not None:
            return tokens.count_text(model, text)
        return tokens.count_messages(model, list(messages or []))

    def stream(
        self,
        deployment: Deployment,
        messages: Sequence[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float | None,
        timeout_s: float,
        request_id: str,
    ) -> AsyncIterator[Piece]:
        call = Call(deployment, messages, max_tokens, temperature, timeout_s, request_id)
        if deployment.provider in LEAN_PROVIDERS:
            return self._lean(call)
        return self._litellm(call)

    async def _lean(self, call: Call) -> AsyncIterator[Piece]:
        d, timeout_s = call.deployment, call.timeout_s
        body = chat_body(d.model, call.messages, call.max_tokens, call.temperature)
        headers = {"x-request-id": call.request_id}
        key = d.api_key
        if key:
            headers["authorization"] = f"Bearer {key}"
        url = (d.api_base or OPENAI_BASE).rstrip("/") + "/chat/completions"
        # sock_read bounds the wait for the first token and between tokens: a provider that
        # goes quiet for that long is given up on (and the engine may fall back).
        timeout = aiohttp.ClientTimeout(total=None, connect=min(5.0, timeout_s), sock_read=timeout_s)
        sent = 0
        try:
            async with self.session.post(url, json=body, headers=headers, timeout=timeout) as resp:
                if resp.status >= 400:
                    text = await resp.text(errors="replace")
                    raise status_error(d.name, resp.status, text, retry_after(resp.headers), 0)
                done = False
                buffer = b""
                reads = ReadPacer(self.flush_interval_s, resp)
                # Whatever arrived in one read is parsed together and its text leaves as one
                # piece: a burst costs one trip through the layers above instead of one per
                # token, and a paced provider is read once per flush interval (see ReadPacer).
                async for data_in in resp.content.iter_any():
                    buffer += data_in
                    if b"\n" not in data_in:
                        continue
                    lines = buffer.split(b"\n")
                    buffer = lines.pop()
                    text_parts: list[str] = []
                    finish = usage_piece = None
                    malformed = False
                    for line in lines:
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            done = True
                            break
                        try:  # a provider's chunk per token: the parse is on the hot path
                            chunk = orjson.loads(data)
                            for choice in chunk.get("choices") or ():
                                content = (choice.get("delta") or {}).get("content")
                                if content:
                                    sent += 1
                                    text_parts.append(str(content))
                                if choice.get("finish_reason"):
                                    finish = str(choice["finish_reason"])
                            usage = chunk.get("usage")
                            if usage and usage.get("completion_tokens") is not None:
                                usage_piece = Piece(
                                    prompt_tokens=int(usage.get("prompt_tokens") or 0),
                                    completion_tokens=int(usage["completion_tokens"]),
                                )
                        except (ValueError, TypeError, AttributeError):  # not JSON, or not a chunk's shape
                            malformed = True  # the text before it still goes out, then the stream fails
                            break
                    if text_parts:
                        yield Piece(text="".join(text_parts))
                    if malformed:
                        raise ValueError("malformed stream chunk")
                    if finish:
                        yield Piece(finish_reason=finish)
                    if usage_piece is not None:
                        yield usage_piece
                    if done:
                        break
                    if text_parts:
                        await reads.after_text()
                if not done:
                    raise cut_short(d.name, sent, f"the stream ended without [DONE] after {sent} tokens")
        except (aiohttp.ServerTimeoutError, TimeoutError):
            raise timed_out(d.name, timeout_s, sent) from None
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            raise cut_short(d.name, sent, f"the stream was cut after {sent} tokens ({type(exc).__name__})") from None
        except aiohttp.ClientError as exc:
            raise broken(d.name, exc, sent) from None
        except ValueError:  # orjson.JSONDecodeError (a json.JSONDecodeError) and friends
            raise ProviderError(
                f"{d.name} sent a malformed stream chunk", outcome="malformed stream", tokens_sent=sent
            ) from None

    def _litellm(self, call: Call) -> AsyncIterator[Piece]:
        # The LiteLLM path's own generator, not a wrapper: closing it closes the provider stream.
        return self.litellm_path().stream(call)
