"""Entry point: `python -m gateway.ratelimit` serves Envoy's rls.v3 API on services.ratelimit."""

from __future__ import annotations

from tiermesh_rls.v3 import rls_pb2 as pb
from tiermesh_rls.v3 import rls_pb2_grpc as pb_grpc

from gateway.ratelimit import config as rl_config
from gateway.ratelimit.limiter import FixedWindow
from gateway.ratelimit.servicer import RateLimitServicer
from services.runtime import config, logs, observability
from services.runtime.server import run, serve


async def main() -> None:
    tree = config.load()
    log = logs.setup("ratelimit", config.get_str(tree, "log_level", "info", where=""))
    observability.setup("ratelimit", tree)
    node = config.section(tree, "ratelimit")
    cfg = rl_config.parse(node.get("config"))
    counters = FixedWindow(
        config.get_str(node, "redis_url", "redis://127.0.0.1:6379/0", where="ratelimit"),
        timeout_s=config.get_float(node, "redis_timeout_ms", 10.0, where="ratelimit", lo=1, hi=10_000) / 1000,
    )
    servicer = RateLimitServicer(cfg, counters, fail_open=not bool(node.get("failure_mode_deny", False)))
    await serve(
        "ratelimit",
        tree,
        log,
        service_names=[pb.DESCRIPTOR.services_by_name["RateLimitService"].full_name],
        register=lambda server: pb_grpc.add_RateLimitServiceServicer_to_server(servicer, server),
        on_stop=counters.aclose,
    )


if __name__ == "__main__":
    run(main)
