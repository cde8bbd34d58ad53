"""RateLimitService.ShouldRateLimit: match descriptors to rules, count in Redis, answer OK or OVER_LIMIT.

Envoy asks once per request and waits `ratelimit.timeout_ms` for the verdict, so the work per
call is kept small: rules are matched in memory, the counters cost one Redis round trip, and the
metric series a verdict touches are looked up once, not per call.
"""

from __future__ import annotations

import logging
import time

from google.protobuf.duration_pb2 import Duration
from tiermesh_rls.v3 import rls_pb2 as pb
from tiermesh_rls.v3 import rls_pb2_grpc as pb_grpc

from gateway.ratelimit import metrics
from gateway.ratelimit.config import Node, RateLimitConfig
from gateway.ratelimit.limiter import FixedWindow, RedisError
from services.runtime.errors import InvalidArgument
from services.runtime.server import Context

log = logging.getLogger("tiermesh.ratelimit")

UNIT_ENUM = {
    "second": pb.RateLimitResponse.RateLimit.SECOND,
    "minute": pb.RateLimitResponse.RateLimit.MINUTE,
    "hour": pb.RateLimitResponse.RateLimit.HOUR,
    "day": pb.RateLimitResponse.RateLimit.DAY,
}
OK, OVER = pb.RateLimitResponse.OK, pb.RateLimitResponse.OVER_LIMIT


class RateLimitServicer(pb_grpc.RateLimitServiceServicer):
    def __init__(
        self, cfg: RateLimitConfig, counters: FixedWindow, fail_open: bool = True, max_hits_addend: int = 1000
    ) -> None:
        self.cfg = cfg
        self.counters = counters
        self.fail_open = fail_open
        self.max_hits_addend = max_hits_addend
        self._redis_down = False
        self._decisions = {
            (domain, code): metrics.DECISIONS.labels(domain, pb.RateLimitResponse.Code.Name(code))
            for domain in (cfg.domain, "other")
            for code in (OK, OVER)
        }
        self._always_ok = pb.RateLimitResponse(overall_code=OK)

    async def ShouldRateLimit(self, request: pb.RateLimitRequest, context: Context) -> pb.RateLimitResponse:
        if request.hits_addend > self.max_hits_addend:
            raise InvalidArgument(
                f"hits_addend: {request.hits_addend} is over the limit of {self.max_hits_addend} "
                "(ratelimit.max_hits_addend)"
            )
        if request.domain != self.cfg.domain:
            self._decisions[("other", OK)].inc()
            return self._always_ok
        response = await self._decide(request)
        self._decisions[(self.cfg.domain, response.overall_code)].inc()
        return response

    async def _decide(self, request: pb.RateLimitRequest) -> pb.RateLimitResponse:
        hits = request.hits_addend or 1
        found = [self.cfg.find([(e.key, e.value) for e in d.entries]) for d in request.descriptors]
        matched = [(node, path) for node, path in found if node is not None]
        if not matched:
            return pb.RateLimitResponse(
                overall_code=OK, statuses=[pb.RateLimitResponse.DescriptorStatus(code=OK)] * len(found)
            )
        started = time.perf_counter()
        try:
            verdicts = await self.counters.check(self.cfg.domain, matched, hits)
        except RedisError as exc:
            metrics.REDIS_ERRORS.inc()
            if not self._redis_down:
                log.warning(
                    "Redis unreachable; %s",
                    "allowing all requests" if self.fail_open else "denying",
                    extra={"error": str(exc)},
                )
                self._redis_down = True
            code = OK if self.fail_open else OVER
            return pb.RateLimitResponse(
                overall_code=code, statuses=[pb.RateLimitResponse.DescriptorStatus(code=code)] * len(found)
            )
        metrics.REDIS_DURATION.observe(time.perf_counter() - started)
        if self._redis_down:
            log.info("Redis reachable again")
            self._redis_down = False
        overall = OK
        statuses = []
        it = iter(verdicts)
        for node, _ in found:
            if node is None or node.limit is None:
                statuses.append(pb.RateLimitResponse.DescriptorStatus(code=OK))
                continue
            v = next(it)
            denied = v.over and not node.shadow
            if v.over:
                self._over_limit(node)
            statuses.append(
                pb.RateLimitResponse.DescriptorStatus(
                    code=OVER if denied else OK,
                    current_limit=pb.RateLimitResponse.RateLimit(
                        name=node.limit.name,
                        requests_per_unit=node.limit.requests_per_unit,
                        unit=UNIT_ENUM[node.limit.unit],
                    ),
                    limit_remaining=v.remaining,
                    duration_until_reset=Duration(seconds=v.reset_s),
                )
            )
            if denied:
                overall = OVER
        return pb.RateLimitResponse(overall_code=overall, statuses=statuses)

    def _over_limit(self, node: Node) -> None:
        assert node.limit is not None
        mode = "shadow" if node.shadow else "enforced"
        metrics.OVER_LIMIT.labels(self.cfg.domain, node.limit.name, mode).inc()
        if node.shadow:
            log.info("over limit in shadow mode", extra={"limit": node.limit.name})
