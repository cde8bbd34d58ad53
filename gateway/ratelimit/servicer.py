"""RateLimitService.ShouldRateLimit: match descriptors to rules, count in Redis, answer OK or OVER_LIMIT."""

from __future__ import annotations

import logging
import time

from google.protobuf.duration_pb2 import Duration
from redis.exceptions import RedisError
from tiermesh_rls.v3 import rls_pb2 as pb
from tiermesh_rls.v3 import rls_pb2_grpc as pb_grpc

from gateway.ratelimit import metrics
from gateway.ratelimit.config import RateLimitConfig
from gateway.ratelimit.limiter import FixedWindow
from services.runtime.server import Context

log = logging.getLogger("tiermesh.ratelimit")

UNIT_ENUM = {
    "second": pb.RateLimitResponse.RateLimit.SECOND,
    "minute": pb.RateLimitResponse.RateLimit.MINUTE,
    "hour": pb.RateLimitResponse.RateLimit.HOUR,
    "day": pb.RateLimitResponse.RateLimit.DAY,
}


class RateLimitServicer(pb_grpc.RateLimitServiceServicer):
    def __init__(self, cfg: RateLimitConfig, counters: FixedWindow, fail_open: bool = True) -> None:
        self.cfg = cfg
        self.counters = counters
        self.fail_open = fail_open
        self._redis_down = False

    async def ShouldRateLimit(self, request: pb.RateLimitRequest, context: Context) -> pb.RateLimitResponse:
        response = await self._decide(request)
        domain = self.cfg.domain if request.domain == self.cfg.domain else "other"
        metrics.DECISIONS.labels(domain, pb.RateLimitResponse.Code.Name(response.overall_code)).inc()
        return response

    async def _decide(self, request: pb.RateLimitRequest) -> pb.RateLimitResponse:
        ok, over = pb.RateLimitResponse.OK, pb.RateLimitResponse.OVER_LIMIT
        if request.domain != self.cfg.domain:
            return pb.RateLimitResponse(overall_code=ok)
        hits = request.hits_addend or 1
        found = [self.cfg.find([(e.key, e.value) for e in d.entries]) for d in request.descriptors]
        matched = [(node, path) for node, path in found if node is not None]
        statuses = [pb.RateLimitResponse.DescriptorStatus(code=ok) for _ in request.descriptors]
        if not matched:
            return pb.RateLimitResponse(overall_code=ok, statuses=statuses)
        started = time.perf_counter()
        try:
            verdicts = await self.counters.check(self.cfg.domain, matched, hits)
        except (RedisError, OSError) as exc:
            metrics.REDIS_ERRORS.inc()
            if not self._redis_down:
                log.warning(
                    "Redis unreachable; %s",
                    "allowing all requests" if self.fail_open else "denying",
                    extra={"error": str(exc)},
                )
                self._redis_down = True
            return pb.RateLimitResponse(overall_code=ok if self.fail_open else over, statuses=statuses)
        metrics.REDIS_DURATION.observe(time.perf_counter() - started)
        if self._redis_down:
            log.info("Redis reachable again")
            self._redis_down = False
        overall = ok
        it = iter(verdicts)
        for i, (node, _) in enumerate(found):
            if node is None or node.limit is None:
                continue
            v = next(it)
            denied = v.over and not node.shadow
            if v.over:
                metrics.OVER_LIMIT.labels(
                    self.cfg.domain, node.limit.name, "shadow" if node.shadow else "enforced"
                ).inc()
            if v.over and node.shadow:
                log.info("over limit in shadow mode", extra={"limit": node.limit.name})
            statuses[i] = pb.RateLimitResponse.DescriptorStatus(
                code=over if denied else ok,
                current_limit=pb.RateLimitResponse.RateLimit(
                    name=node.limit.name,
                    requests_per_unit=node.limit.requests_per_unit,
                    unit=UNIT_ENUM[node.limit.unit],
                ),
                limit_remaining=v.remaining,
                duration_until_reset=Duration(seconds=v.reset_s),
            )
            if denied:
                overall = over
        return pb.RateLimitResponse(overall_code=overall, statuses=statuses)
