"""Reading the model catalog changes nothing: only a call moves a breaker to half-open."""

from __future__ import annotations

from tiermesh.inference.v1 import inference_service_pb2 as ipb

from services.inference import config as inference_config
from services.inference.breaker import HALF_OPEN, OPEN
from services.inference.engine import Engine
from services.inference.provider import Provider
from services.inference.servicer import InferenceServicer
from services.runtime import config


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Caller:
    """A call's context as a caller without a certificate or metadata presents it."""

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


async def test_listing_models_never_moves_a_breaker() -> None:
    cfg = inference_config.load(config.load(environ={}), environ={})
    clock = Clock()
    provider = Provider(4)
    try:
        engine = Engine(cfg, provider, clock=clock)
        breaker = engine.breakers["sim-fast"]
        for _ in range(cfg.breaker.consecutive_failures):
            assert breaker.allow()
            breaker.record(False)
        assert breaker.state == OPEN
        clock.now += cfg.breaker.open_s + 1  # the open period is over: the next call may try
        reply = await InferenceServicer(cfg, engine).ListModels(ipb.ListModelsRequest(), Caller())  # type: ignore[arg-type]
        listed = next(m for m in reply.models if m.deployment == "sim-fast")
        assert listed.breaker_state == HALF_OPEN  # what a call would find ...
        assert breaker.state == OPEN and breaker.trials_in_flight == 0  # ... but reading moved nothing
        engine.candidates(1)
        assert breaker.state == OPEN
        assert breaker.allow() and breaker.state == HALF_OPEN  # a call does
    finally:
        await provider.aclose()


class Probed(Provider):
    """The real provider, with health checks that answer as the test says."""

    def __init__(self, answers: list[bool]) -> None:
        super().__init__(4)
        self.answers = answers

    async def check(self, d: object) -> bool:
        return self.answers.pop(0) if d.name == "sim-fast" else True  # type: ignore[attr-defined]


async def test_one_failed_health_check_does_not_take_a_deployment_out() -> None:
    cfg = inference_config.load(config.load(environ={}), environ={})
    provider = Probed([False, True, False, False, True])
    try:
        engine = Engine(cfg, provider)
        seen = []
        for _ in range(5):
            await engine.check_health()
            seen.append(engine.healthy["sim-fast"])
        # a slow answer is forgiven; two failures in a row mark it down; one success brings it back
        assert seen == [True, True, True, False, True]
        assert "sim-fast" in [d.name for d in engine.candidates(1)]
    finally:
        await provider.aclose()
