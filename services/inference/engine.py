"""Answers a request from a tier's deployments: cache, cheapest healthy first, retries, breakers,
fallbacks, and the default response when nothing can answer.

The order of work for one request:

1. Cache (unless bypassed): a hit is replayed as the same events, marked cached, costing nothing.
2. Deployments of the tier, healthy and closed-breaker ones first, cheapest first.
3. Each deployment gets up to `retry.max_attempts` calls while the error is retryable (5xx, 429,
   timeout, connection error, a stream cut before its first token), the retry budget has a token
   and the deadline leaves room for the backoff (full jitter, never sooner than Retry-After).
4. A context window too small skips to deployments with a larger window.
5. A stream that dies after text reached the client is never retried in place: the next
   deployment answers from the start, announced by a `restart` event that tells the client how
   many characters to discard, so no text is silently duplicated or dropped.
6. If every deployment failed: the configured default response, marked degraded (never cached),
   or UNAVAILABLE naming what each deployment did.

Usage and cost: tokens from the provider's final usage, or counted with the tokenizer when it
sent none; cost from the catalog in micro-dollars, summed over every attempt that produced
tokens (a cut stream's tokens were generated and are billed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from opentelemetry import trace

from services.inference import metrics
from services.inference.breaker import OPEN, CircuitBreaker
from services.inference.cache import AnswerCache, CachedAnswer, cache_key
from services.inference.config import Deployment, InferenceConfig
from services.inference.provider import ContextTooLong, Provider, ProviderError
from services.inference.retry import Backoff, RetryBudget
from services.runtime.errors import DeadlineExceeded, Unavailable

log = logging.getLogger("tiermesh.inference.engine")

DEFAULT_DEPLOYMENT = "default-response"


@dataclass(frozen=True)
class GenerateInput:
    messages: Sequence[tuple[str, str]]  # (role, content)
    tier: int
    max_tokens: int = 0
    temperature: float | None = None
    bypass_cache: bool = False
    context_id: str = ""
    request_id: str = ""
    deadline: float | None = None  # monotonic time


@dataclass(frozen=True)
class Selected:
    deployment: Deployment


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Restart:
    failed_deployment: str
    reason: str
    discarded_chars: int


@dataclass(frozen=True)
class AttemptRecord:
    deployment: str
    outcome: str
    delay_ms: int
    duration_ms: int


@dataclass
class Done:
    model: str
    deployment: str
    prompt_tokens: int
    completion_tokens: int
    cost_micro_usd: int
    finish_reason: str
    cached: bool = False
    degraded: bool = False
    fallback_path: list[str] = field(default_factory=list)
    attempts: list[AttemptRecord] = field(default_factory=list)


Event = Selected | Delta | Restart | Done


class Quota:
    """A deployment's requests and tokens over the last minute, against its rpm/tpm quota, so a
    busy deployment is passed over before the provider answers 429."""

    def __init__(self, rpm: int | None, tpm: int | None, clock: Callable[[], float]) -> None:
        self.rpm, self.tpm, self.clock = rpm, tpm, clock
        self.requests: deque[float] = deque()
        self.tokens: deque[tuple[float, int]] = deque()
        self.token_total = 0

    def _prune(self) -> None:
        horizon = self.clock() - 60.0
        while self.requests and self.requests[0] < horizon:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] < horizon:
            self.token_total -= self.tokens.popleft()[1]

    def room(self) -> bool:
        if self.rpm is None and self.tpm is None:
            return True
        self._prune()
        return (self.rpm is None or len(self.requests) < self.rpm) and (self.tpm is None or self.token_total < self.tpm)

    def add_request(self) -> None:
        if self.rpm is not None:
            self.requests.append(self.clock())

    def add_tokens(self, n: int) -> None:
        if self.tpm is not None:
            self.tokens.append((self.clock(), n))
            self.token_total += n


class Engine:
    def __init__(
        self,
        cfg: InferenceConfig,
        provider: Provider,
        cache: AnswerCache | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        backoff: Backoff | None = None,
    ) -> None:
        self.cfg = cfg
        self.provider = provider
        self.cache = cache
        self.clock = clock
        self.sleep = sleep
        self.backoff = backoff or Backoff(cfg.retry)
        self.budget = RetryBudget(cfg.retry.budget_ratio, cfg.retry.budget_max_tokens)
        self.breakers = {d.name: CircuitBreaker(cfg.breaker, clock) for deps in cfg.tiers.values() for d in deps}
        self.healthy = {name: True for name in self.breakers}
        self.quotas = {d.name: Quota(d.rpm, d.tpm, clock) for deps in cfg.tiers.values() for d in deps}
        self._background: set[asyncio.Task[None]] = set()
        metrics.watch_deployments({name: b.observed_state for name, b in self.breakers.items()}, self.healthy)

    def candidates(self, tier: int) -> list[Deployment]:
        """The tier's deployments in the order to try: usable ones (healthy, breaker not open)
        cheapest first, then the rest (they may have recovered), each group cheapest first.
        Reading the order changes no breaker: only a call (`allow`) moves one to half-open."""
        deps = list(self.cfg.tiers[tier])

        def key(d: Deployment) -> tuple[bool, int]:
            usable = (
                self.healthy[d.name] and self.breakers[d.name].observed_state() != OPEN and self.quotas[d.name].room()
            )
            return (not usable, d.input_micro_usd_per_mtok + d.output_micro_usd_per_mtok)

        return sorted(deps, key=key)

    def _remaining(self, req: GenerateInput) -> float:
        limit = self.cfg.request_timeout_s
        return limit if req.deadline is None else min(limit, req.deadline - self.clock())

    async def generate(self, req: GenerateInput) -> AsyncIterator[Event]:
        # Time to first token runs from the request, not the attempt, on the wall clock (the
        # metrics' clock; self.clock, which paces breakers and retries, may be a test's).
        request_started = time.perf_counter()
        tier = str(req.tier)
        first_token = True
        key = ""
        if self.cache is not None:
            params = {"max_tokens": req.max_tokens or None, "temperature": req.temperature}
            key = cache_key(req.tier, req.messages, params, req.context_id)
            if not req.bypass_cache:
                hit = await self.cache.get(key)
                if hit is not None:
                    async for event in self._replay(hit, req.tier):
                        yield event
                    return
        self.budget.deposit()
        messages = [{"role": role, "content": content} for role, content in req.messages]
        attempts: list[AttemptRecord] = []
        path: list[str] = []
        failures: list[str] = []
        prompt_total = completion_total = cost_total = 0
        emitted_chars = 0  # characters the client holds from a deployment that later failed
        emitter = restart_reason = ""
        min_window = 0
        for d in self.candidates(req.tier):
            if d.context_window <= min_window:
                failures.append(f"{d.name}: context window too small")
                continue
            quota = self.quotas[d.name]
            if not quota.room():
                attempts.append(AttemptRecord(d.name, "quota full", 0, 0))
                failures.append(f"{d.name}: its requests or tokens per minute are used up")
                continue
            breaker = self.breakers[d.name]
            if not breaker.allow():
                attempts.append(AttemptRecord(d.name, "breaker open", 0, 0))
                failures.append(f"{d.name}: circuit open for {breaker.seconds_until_retry():.1f} s")
                continue
            if path:
                metrics.FALLBACKS.labels(tier).inc()
            path.append(d.name)
            yield Selected(d)
            retry = 0
            delay = 0.0
            while True:
                remaining = self._remaining(req)
                if remaining <= 0:
                    breaker.release()
                    raise DeadlineExceeded(f"the deadline passed while calling tier {req.tier} ({'; '.join(failures)})")
                attempt_started = self.clock()
                quota.add_request()
                text_parts: list[str] = []
                finish = ""
                usage: tuple[int, int] | None = None
                try:
                    stream = self.provider.stream(
                        d,
                        messages,
                        max_tokens=req.max_tokens,
                        temperature=req.temperature,
                        timeout_s=min(remaining, self.cfg.first_token_timeout_s),
                        request_id=req.request_id,
                    )
                    async for piece in stream:
                        if piece.text:
                            if not text_parts and emitted_chars:
                                yield Restart(emitter, restart_reason, emitted_chars)
                                emitted_chars = 0
                            emitter = d.name
                            text_parts.append(piece.text)
                            emitted_chars += len(piece.text)
                            if first_token:
                                first_token = False
                                metrics.TIME_TO_FIRST_TOKEN.labels(tier).observe(time.perf_counter() - request_started)
                            yield Delta(piece.text)
                        if piece.finish_reason:
                            finish = piece.finish_reason
                        if piece.completion_tokens is not None:
                            usage = (piece.prompt_tokens or 0, piece.completion_tokens)
                except ContextTooLong as exc:
                    breaker.record(True)  # the deployment works; the request is too big for it
                    attempts.append(self._attempt(d, exc.outcome, delay, attempt_started))
                    failures.append(str(exc))
                    min_window = max(min_window, d.context_window)
                    break
                except ProviderError as exc:
                    breaker.record(False)
                    attempts.append(self._attempt(d, exc.outcome, delay, attempt_started))
                    failures.append(str(exc))
                    if text_parts:  # partial answer: it was generated, so it is billed
                        restart_reason = str(exc)
                        p, c = self._count(d, messages, text_parts, None)
                        prompt_total, completion_total = prompt_total + p, completion_total + c
                        cost_total += d.cost_micro_usd(p, c)
                        metrics.billed(d.name, p, c, d.cost_micro_usd(p, c))
                        break  # never retried in place once text reached the client
                    retry += 1
                    if not exc.retryable or retry >= self.cfg.retry.max_attempts or breaker.current_state() == OPEN:
                        break
                    delay = self.backoff.delay(retry, exc.retry_after_s)
                    if delay >= self._remaining(req) or not self.budget.withdraw():
                        break
                    await self.sleep(delay)
                    if not breaker.allow():
                        break
                    metrics.RETRIES.labels(d.name).inc()
                    continue
                except BaseException:
                    breaker.release()  # cancelled: no outcome to report
                    raise
                breaker.record(True)
                attempts.append(self._attempt(d, "ok", delay, attempt_started))
                p, c = self._count(d, messages, text_parts, usage)
                quota.add_tokens(p + c)
                prompt_total, completion_total = prompt_total + p, completion_total + c
                cost_total += d.cost_micro_usd(p, c)
                metrics.billed(d.name, p, c, d.cost_micro_usd(p, c))
                done = Done(
                    model=d.model,
                    deployment=d.name,
                    prompt_tokens=prompt_total,
                    completion_tokens=completion_total,
                    cost_micro_usd=cost_total,
                    finish_reason=finish,
                    fallback_path=path,
                    attempts=attempts,
                )
                if self.cache is not None and finish in ("stop", "length"):
                    await self.cache.put(key, CachedAnswer(text_parts, d.model, d.name, p, c, finish))
                _annotate(req.tier, done)
                yield done
                return
        async for event in self._give_up(
            req,
            emitter,
            restart_reason,
            path,
            attempts,
            failures,
            emitted_chars,
            (prompt_total, completion_total, cost_total),
        ):
            yield event

    def _attempt(self, d: Deployment, outcome: str, delay: float, started: float) -> AttemptRecord:
        return AttemptRecord(d.name, outcome, round(delay * 1000), round((self.clock() - started) * 1000))

    def _count(
        self, d: Deployment, messages: list[dict[str, str]], parts: list[str], usage: tuple[int, int] | None
    ) -> tuple[int, int]:
        if usage is not None:
            return usage
        return self.provider.count_tokens(d, messages, None), self.provider.count_tokens(d, None, "".join(parts))

    async def _replay(self, hit: CachedAnswer, tier: int) -> AsyncIterator[Event]:
        deployment = next((d for deps in self.cfg.tiers.values() for d in deps if d.name == hit.deployment), None)
        if deployment is not None:
            yield Selected(deployment)
        for text in hit.deltas:
            yield Delta(text)
        done = Done(
            model=hit.model,
            deployment=hit.deployment,
            prompt_tokens=hit.prompt_tokens,
            completion_tokens=hit.completion_tokens,
            cost_micro_usd=0,  # served from the cache: no provider was paid
            finish_reason=hit.finish_reason,
            cached=True,
            fallback_path=[],
        )
        _annotate(tier, done)
        yield done

    async def _give_up(
        self,
        req: GenerateInput,
        emitter: str,
        restart_reason: str,
        path: list[str],
        attempts: list[AttemptRecord],
        failures: list[str],
        emitted_chars: int,
        totals: tuple[int, int, int],
    ) -> AsyncIterator[Event]:
        summary = "; ".join(failures) or "no deployment is configured"
        log.warning("every deployment failed", extra={"tier": req.tier, "failures": summary})
        if self.cfg.default_response is None:
            metrics.UNANSWERED.labels(str(req.tier)).inc()
            raise Unavailable(f"no model of tier {req.tier} could answer: {summary}")
        if path:
            metrics.FALLBACKS.labels(str(req.tier)).inc()
        metrics.DEFAULT_RESPONSES.labels(str(req.tier)).inc()
        if emitted_chars:
            yield Restart(emitter, restart_reason, emitted_chars)
        yield Delta(self.cfg.default_response)
        done = Done(
            model="",
            deployment=DEFAULT_DEPLOYMENT,
            prompt_tokens=totals[0],
            completion_tokens=totals[1],
            cost_micro_usd=totals[2],
            finish_reason="stop",
            degraded=True,
            fallback_path=[*path, DEFAULT_DEPLOYMENT],
            attempts=attempts,
        )
        _annotate(req.tier, done)
        yield done

    async def check_health(self) -> None:
        """One round of health checks: GET /models on each OpenAI-compatible deployment."""
        checks = [
            (d, self.provider.check(d))
            for deps in self.cfg.tiers.values()
            for d in deps
            if d.provider in ("simulator", "openai_compatible")
        ]
        for d, check in checks:
            ok = await check
            if ok != self.healthy[d.name]:
                log.warning("deployment health changed", extra={"deployment": d.name, "healthy": ok})
            self.healthy[d.name] = ok

    async def health_loop(self) -> None:
        while True:
            try:
                await self.check_health()
            except Exception:  # a failing check must never stop the loop
                log.exception("health check round failed")
            await asyncio.sleep(self.cfg.health_interval_s)


def _annotate(tier: int, done: Done) -> None:
    """Put the answer's outcome on the RPC's span, so a trace shows what was paid for and why."""
    trace.get_current_span().set_attributes(
        {
            "tiermesh.tier": tier,
            "tiermesh.deployment": done.deployment,
            "tiermesh.prompt_tokens": done.prompt_tokens,
            "tiermesh.completion_tokens": done.completion_tokens,
            "tiermesh.cost_micro_usd": done.cost_micro_usd,
            "tiermesh.cached": done.cached,
            "tiermesh.degraded": done.degraded,
            "tiermesh.fallback_path": done.fallback_path,
        }
    )
