"""Entry point: `python -m gateway.ratelimit` serves Envoy's rls.v3 API on services.ratelimit."""

from __future__ import annotations

from tiermesh_rls.v3 import rls_pb2 as pb

from gateway.ratelimit import config as rl_config
from gateway.ratelimit.limiter import FixedWindow
from gateway.ratelimit.servicer import RateLimitServicer
from services.runtime import config, contract, logs, observability, tls
from services.runtime.server import run, serve


async def main() -> None:
    tree = config.load()
    log = logs.setup("ratelimit", config.get_str(tree, "log_level", "info", where=""))
    observability.setup("ratelimit", tree)
    node = config.section(tree, "ratelimit")
    cfg = rl_config.parse(node.get("config"))
    counters = FixedWindow(
        config.get_str(node, "redis_url", "redis://127.0.0.1:6379/0", where="ratelimit"),
        timeout_s=config.get_float(node, "redis_timeout_ms", 50.0, where="ratelimit", lo=1, hi=10_000) / 1000,
    )
    servicer = RateLimitServicer(
        cfg,
        counters,
        fail_open=not config.get_bool(node, "failure_mode_deny", False, where="ratelimit"),
        max_hits_addend=config.get_int(node, "max_hits_addend", 1000, where="ratelimit", lo=1, hi=1_000_000),
    )
    served = contract.served(pb.DESCRIPTOR.services_by_name["RateLimitService"], servicer)
    await serve(
        "ratelimit",
        tree,
        log,
        served,
        # Only the edge counts requests: anyone else could lock a user out with a large hits_addend.
        callers={served.path("ShouldRateLimit"): (tls.EDGE, tls.OPERATOR)},
        on_stop=counters.aclose,
        # Each request waits for this verdict: no span or request id per call (each would cost
        # a sizeable share of the ~0.2 ms a verdict takes).
        traced=False,
    )


if __name__ == "__main__":
    run(main)
