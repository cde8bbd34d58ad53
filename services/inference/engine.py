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
from typing import Any

from opentelemetry import trace

from services.inference import metrics
from services.inference.breaker import OPEN, CircuitBreaker
from services.inference.cache import AnswerCache, CachedAnswer, cache_key
from services.inference.config import Deployment, InferenceConfig
from services.inference.provider import ContextTooLong, Provider, ProviderError
from services.inference.retry import Backoff, RetryBudget
from services.runtime.errors import DeadlineExceeded, InvalidArgument, Unavailable

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
    deployment: str = ""  # pinned by the caller: the only one tried


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


@dataclass
class _Answer:
    """What one call of a deployment sent: its text, how it finished, the usage it reported
    (and, once it answered, the tokens billed for it)."""

    parts: list[str] = field(default_factory=list)
    finish: str = ""
    usage: tuple[int, int] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def cached(self, d: Deployment) -> CachedAnswer:
        return CachedAnswer(self.parts, d.model, d.name, self.prompt_tokens, self.completion_tokens, self.finish)


@dataclass
class _Run:
    """One request on its way through the tier's deployments: what was tried and why it failed,
    what was billed, and the text the client holds from a deployment that later failed."""

    req: GenerateInput
    messages: list[dict[str, str]]
    # Time to first token runs from the request, not the attempt, on the wall clock (the
    # metrics' clock; Engine.clock, which paces breakers and retries, may be a test's).
    started: float = field(default_factory=time.perf_counter)
    first_token: bool = True
    path: list[str] = field(default_factory=list)
    attempts: list[AttemptRecord] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    min_window: int = 0  # a deployment with a window this small or smaller cannot take it
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micro_usd: int = 0
    emitter: str = ""  # the deployment whose text the client holds
    emitted_chars: int = 0  # characters the client holds from a deployment that later failed
    restart_reason: str = ""
    answer: _Answer | None = None

    def failed(self, attempt: AttemptRecord, why: str) -> None:
        self.attempts.append(attempt)
        self.failures.append(why)

    def bill(self, d: Deployment, prompt_tokens: int, completion_tokens: int) -> None:
        cost = d.cost_micro_usd(prompt_tokens, completion_tokens)
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cost_micro_usd += cost
        metrics.billed(d.name, prompt_tokens, completion_tokens, cost)

    def done(self, d: Deployment) -> Done:
        assert self.answer is not None
        return Done(
            model=d.model,
            deployment=d.name,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost_micro_usd=self.cost_micro_usd,
            finish_reason=self.answer.finish,
            fallback_path=self.path,
            attempts=self.attempts,
        )


# Failed health checks in a row that mark a deployment down.
DOWN_AFTER = 2


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
        self.failed_checks = {name: 0 for name in self.breakers}
        self.quotas = {d.name: Quota(d.rpm, d.tpm, clock) for deps in cfg.tiers.values() for d in deps}
        self._background: set[asyncio.Task[None]] = set()
        metrics.watch_deployments({name: b.observed_state for name, b in self.breakers.items()}, self.healthy)

    def candidates(self, tier: int, pinned: str = "") -> list[Deployment]:
        """The tier's deployments in the order to try: usable ones (healthy, breaker not open)
        cheapest first, then the rest (they may have recovered), each group cheapest first.
        Reading the order changes no breaker: only a call (`allow`) moves one to half-open.
        A `pinned` deployment (see `check_pinned`) is the only one."""
        deps = [d for d in self.cfg.tiers[tier] if d.name == pinned] if pinned else list(self.cfg.tiers[tier])

        def key(d: Deployment) -> tuple[bool, int]:
            usable = (
                self.healthy[d.name] and self.breakers[d.name].observed_state() != OPEN and self.quotas[d.name].room()
            )
            return (not usable, d.input_micro_usd_per_mtok + d.output_micro_usd_per_mtok)

        return sorted(deps, key=key)

    def _remaining(self, req: GenerateInput) -> float:
        limit = self.cfg.request_timeout_s
        return limit if req.deadline is None else min(limit, req.deadline - self.clock())

    def check_pinned(self, tier: int, pinned: str) -> None:
        """INVALID_ARGUMENT when the tier has no deployment of the pinned name."""
        names = [d.name for d in self.cfg.tiers[tier]]
        if pinned not in names:
            raise InvalidArgument(f"deployment: tier {tier} has no deployment {pinned!r}; it has {', '.join(names)}")

    async def generate(self, req: GenerateInput) -> AsyncIterator[Event]:
        """The events of one answer: a cached one replayed, or the first deployment (in
        `candidates` order) that answers, else the default response or UNAVAILABLE."""
        if req.deployment:
            self.check_pinned(req.tier, req.deployment)
        key = self._cache_key(req)
        if key and not req.bypass_cache:
            assert self.cache is not None
            hit = await self.cache.get(key)
            if hit is not None:
                async for event in self._replay(hit, req.tier):
                    yield event
                return
        self.budget.deposit()
        run = _Run(req, [{"role": role, "content": content} for role, content in req.messages])
        for d in self.candidates(req.tier, req.deployment):
            if not self._may_call(run, d):
                continue
            if run.path:
                metrics.FALLBACKS.labels(str(req.tier)).inc()
            run.path.append(d.name)
            yield Selected(d)
            async for event in self._call(run, d):
                yield event
            if run.answer is not None:
                done = run.done(d)
                if self.cache is not None and done.finish_reason in ("stop", "length"):
                    await self.cache.put(key, run.answer.cached(d))
                _annotate(req.tier, done)
                yield done
                return
        async for event in self._give_up(run):
            yield event

    def _cache_key(self, req: GenerateInput) -> str:
        if self.cache is None:
            return ""
        params: dict[str, Any] = {"max_tokens": req.max_tokens or None, "temperature": req.temperature}
        if req.deployment:  # a pinned answer comes from that deployment, even from the cache
            params["deployment"] = req.deployment
        return cache_key(req.tier, req.messages, params, req.context_id)

    def _may_call(self, run: _Run, d: Deployment) -> bool:
        """Whether `d` can be called for this request now; if not, why goes on the record."""
        if d.context_window <= run.min_window:
            run.failures.append(f"{d.name}: context window too small")
            return False
        if not self.quotas[d.name].room():
            used_up = f"{d.name}: its requests or tokens per minute are used up"
            run.failed(AttemptRecord(d.name, "quota full", 0, 0), used_up)
            return False
        breaker = self.breakers[d.name]
        if not breaker.allow():
            run.failed(
                AttemptRecord(d.name, "breaker open", 0, 0),
                f"{d.name}: circuit open for {breaker.seconds_until_retry():.1f} s",
            )
            return False
        return True

    async def _call(self, run: _Run, d: Deployment) -> AsyncIterator[Event]:
        """Call `d`, again while a retry can help; sets `run.answer` when it answered."""
        breaker = self.breakers[d.name]
        retry, delay = 0, 0.0
        while True:
            remaining = self._remaining(run.req)
            if remaining <= 0:
                breaker.release()
                summary = "; ".join(run.failures)
                raise DeadlineExceeded(f"the deadline passed while calling tier {run.req.tier} ({summary})")
            started = self.clock()
            self.quotas[d.name].add_request()
            answer = _Answer()
            try:
                async for event in self._stream(run, d, answer, remaining):
                    yield event
            except ContextTooLong as exc:
                breaker.record(True)  # the deployment works; the request is too big for it
                run.failed(self._attempt(d, exc.outcome, delay, started), str(exc))
                run.min_window = max(run.min_window, d.context_window)
                return
            except ProviderError as exc:
                breaker.record(False)
                run.failed(self._attempt(d, exc.outcome, delay, started), str(exc))
                if answer.parts:  # partial answer: it was generated, so it is billed ...
                    run.restart_reason = str(exc)
                    run.bill(d, *self._count(d, run.messages, answer.parts, None))
                    return  # ... and never retried in place once text reached the client
                retry += 1
                waited = await self._wait_to_retry(run.req, d, exc, retry)
                if waited is None:
                    return
                delay = waited
                continue
            except BaseException:
                breaker.release()  # cancelled: no outcome to report
                raise
            breaker.record(True)
            run.attempts.append(self._attempt(d, "ok", delay, started))
            p, c = self._count(d, run.messages, answer.parts, answer.usage)
            self.quotas[d.name].add_tokens(p + c)
            run.bill(d, p, c)
            answer.prompt_tokens, answer.completion_tokens = p, c
            run.answer = answer
            return

    async def _stream(self, run: _Run, d: Deployment, answer: _Answer, remaining: float) -> AsyncIterator[Event]:
        """One call of `d`: its text as deltas (after a restart event when the client holds text
        from a deployment that failed), its finish reason and usage into `answer`."""
        stream = self.provider.stream(
            d,
            run.messages,
            max_tokens=run.req.max_tokens,
            temperature=run.req.temperature,
            timeout_s=min(remaining, self.cfg.first_token_timeout_s),
            request_id=run.req.request_id,
        )
        async for piece in stream:
            if piece.text:
                if not answer.parts and run.emitted_chars:
                    yield Restart(run.emitter, run.restart_reason, run.emitted_chars)
                    run.emitted_chars = 0
                run.emitter = d.name
                answer.parts.append(piece.text)
                run.emitted_chars += len(piece.text)
                if run.first_token:
                    run.first_token = False
                    elapsed = time.perf_counter() - run.started
                    metrics.TIME_TO_FIRST_TOKEN.labels(str(run.req.tier)).observe(elapsed)
                yield Delta(piece.text)
            if piece.finish_reason:
                answer.finish = piece.finish_reason
            if piece.completion_tokens is not None:
                answer.usage = (piece.prompt_tokens or 0, piece.completion_tokens)

    async def _wait_to_retry(self, req: GenerateInput, d: Deployment, exc: ProviderError, retry: int) -> float | None:
        """Wait before calling `d` again and return how long, or None when another call cannot
        help (not retryable, attempts used up, breaker open) or is not allowed (deadline, budget)."""
        breaker = self.breakers[d.name]
        if not exc.retryable or retry >= self.cfg.retry.max_attempts or breaker.current_state() == OPEN:
            return None
        delay = self.backoff.delay(retry, exc.retry_after_s)
        if delay >= self._remaining(req) or not self.budget.withdraw():
            return None
        await self.sleep(delay)
        if not breaker.allow():
            return None
        metrics.RETRIES.labels(d.name).inc()
        return delay

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

    async def _give_up(self, run: _Run) -> AsyncIterator[Event]:
        req = run.req
        summary = "; ".join(run.failures) or "no deployment is configured"
        log.warning("every deployment failed", extra={"tier": req.tier, "failures": summary})
        if self.cfg.default_response is None:
            metrics.UNANSWERED.labels(str(req.tier)).inc()
            raise Unavailable(f"no model of tier {req.tier} could answer: {summary}")
        if run.path:
            metrics.FALLBACKS.labels(str(req.tier)).inc()
        metrics.DEFAULT_RESPONSES.labels(str(req.tier)).inc()
        if run.emitted_chars:
            yield Restart(run.emitter, run.restart_reason, run.emitted_chars)
        yield Delta(self.cfg.default_response)
        done = Done(
            model="",
            deployment=DEFAULT_DEPLOYMENT,
            prompt_tokens=run.prompt_tokens,
            completion_tokens=run.completion_tokens,
            cost_micro_usd=run.cost_micro_usd,
            finish_reason="stop",
            degraded=True,
            fallback_path=[*run.path, DEFAULT_DEPLOYMENT],
            attempts=run.attempts,
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
            passed = await check
            self.failed_checks[d.name] = 0 if passed else self.failed_checks[d.name] + 1
            # One slow answer (a busy machine, a pause) does not take a deployment out: it is down
            # after DOWN_AFTER failed checks in a row, and back at the first that passes.
            ok = self.failed_checks[d.name] < DOWN_AFTER
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
