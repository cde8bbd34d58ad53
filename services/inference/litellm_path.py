"""The LiteLLM path: every provider that is not OpenAI-compatible (Anthropic, Gemini, Bedrock ...).

Imported only when a deployment needs it (see Provider.litellm_path): LiteLLM costs ~2.5 s and
~180 MB to import. It reads its local cost map (no network), keeps one httpx pool for all its
calls, and answers with the same pieces and errors as the lean path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx
import litellm
import openai
from litellm.exceptions import MidStreamFallbackError
from litellm.llms.custom_httpx.async_client_cleanup import close_litellm_async_clients

from services.inference.provider import (
    Call,
    Piece,
    broken,
    chat_body,
    cut_short,
    retry_after,
    status_error,
    timed_out,
    too_long,
)

log = logging.getLogger("tiermesh.inference.provider")

litellm.telemetry = False
litellm.suppress_debug_info = True
litellm.drop_params = True


class LiteLLMPath:
    def __init__(self, max_connections: int) -> None:
        self.http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            timeout=httpx.Timeout(connect=5.0, read=None, write=30.0, pool=10.0),
        )
        litellm.aclient_session = self.http

    async def warm_up(self) -> None:
        """Run LiteLLM's lazy imports and client set-up now, not on a user's first request.

        Uses a mock response and a refused loopback port: nothing leaves the machine, no
        provider is billed. Cuts a first LiteLLM call from ~0.6 s to ~30 ms here.
        """
        messages = [{"role": "user", "content": "warm-up"}]
        response = await litellm.acompletion(
            model="openai/warm-up", messages=messages, stream=True, mock_response="ok", api_key="warm-up"
        )
        async for _ in response:
            pass
        try:
            response = await litellm.acompletion(
                model="openai/warm-up",
                messages=messages,
                stream=True,
                api_key="warm-up",
                api_base="http://127.0.0.1:9/v1",  # discard port: refused at once
                max_retries=0,
                timeout=2,
            )
            async for _ in response:
                pass
        except (openai.APIError, httpx.HTTPError):
            pass
        litellm.token_counter(model="gpt-4o", text="warm-up")

    async def aclose(self) -> None:
        await self.http.aclose()
        # LiteLLM caches SDK clients built around our pool; none may outlive it.
        await close_litellm_async_clients()  # type: ignore[no-untyped-call]
        litellm.in_memory_llm_clients_cache.flush_cache()  # type: ignore[no-untyped-call]
        if litellm.aclient_session is self.http:
            litellm.aclient_session = None

    def count_tokens(self, model: str, messages: Sequence[dict[str, str]] | None, text: str | None) -> int:
        if text is not None:
            return int(litellm.token_counter(model=model, text=text))
        return int(litellm.token_counter(model=model, messages=list(messages or [])))

    async def stream(self, call: Call) -> AsyncIterator[Piece]:
        d, timeout_s = call.deployment, call.timeout_s
        kwargs = chat_body(d.litellm_model, call.messages, call.max_tokens, call.temperature)
        kwargs.update(
            timeout=timeout_s, max_retries=0, api_key=d.api_key, extra_headers={"x-request-id": call.request_id}
        )
        if d.api_base:
            kwargs["api_base"] = d.api_base
        sent = 0
        response: Any = None
        try:
            response = await litellm.acompletion(**kwargs)
            async for chunk in response:
                usage = getattr(chunk, "usage", None)
                for choice in chunk.choices or ():
                    text = getattr(choice.delta, "content", None) or ""
                    if text:
                        sent += 1
                        yield Piece(text=text)
                    if choice.finish_reason:
                        yield Piece(finish_reason=str(choice.finish_reason))
                if usage is not None and getattr(usage, "completion_tokens", None) is not None:
                    yield Piece(
                        prompt_tokens=int(usage.prompt_tokens or 0), completion_tokens=int(usage.completion_tokens or 0)
                    )
        except litellm.ContextWindowExceededError:  # type: ignore[attr-defined]
            raise too_long(d.name) from None
        except openai.APITimeoutError:
            raise timed_out(d.name, timeout_s, sent) from None
        except MidStreamFallbackError:  # LiteLLM's name for a stream that broke off
            raise cut_short(d.name, sent, f"the stream was cut after {sent} tokens") from None
        except openai.APIStatusError as exc:
            after = None
            for headers in (
                getattr(exc, "litellm_response_headers", None),
                getattr(exc, "headers", None),
                getattr(exc.response, "headers", None),
            ):
                after = after if after is not None else retry_after(headers)
            raise status_error(d.name, exc.status_code, exc.message, after, sent) from None
        except (httpx.HTTPError, openai.APIError) as exc:
            outcome = f"stream cut after {sent} tokens" if sent else "connection error"
            raise broken(d.name, exc, sent, outcome) from None
        finally:
            await _close(response)


async def _close(response: Any) -> None:
    """Close the provider stream so a cancelled call releases the provider's connection at once."""
    stream = getattr(response, "completion_stream", None)
    for obj in (stream, getattr(stream, "response", None)):
        closer = getattr(obj, "aclose", None) or getattr(obj, "close", None)
        if closer is not None:
            try:
                result = closer()
                if hasattr(result, "__await__"):
                    await result
            except Exception:  # closing is best effort; the call is over either way
                log.debug("closing the provider stream failed", exc_info=True)
            return
