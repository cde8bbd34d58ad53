"""The simulator's behaviour switches: by model name and by header, with clear errors."""

from __future__ import annotations

import pytest

from services.simulator.faults import BadBehaviour, Behaviour, behaviour_for

DEFAULT = Behaviour(token_delay_ms=5, tokens=10)


def test_plain_model_gets_the_default() -> None:
    assert behaviour_for("sim-fast", {}, DEFAULT) == DEFAULT


def test_model_name_segments() -> None:
    b = behaviour_for("sim-fast:fault=cut:3:delay_ms=50:tokens=20", {}, DEFAULT)
    assert (b.fault, b.cut_after, b.token_delay_ms, b.tokens) == ("cut", 3, 50.0, 20)
    assert behaviour_for("m:fault=429:retry_after=7", {}, DEFAULT).retry_after_s == 7


def test_headers_win_over_the_model_name() -> None:
    b = behaviour_for("m:fault=500", {"x-sim-fault": "hang", "x-sim-tokens": "4"}, DEFAULT)
    assert (b.fault, b.tokens) == ("hang", 4)


@pytest.mark.parametrize(
    ("model", "headers", "message"),
    [
        ("m:fault=teapot", {}, "fault must be one of"),
        ("m:tokens=0", {}, "tokens must be from 1"),
        ("m:colour=red", {}, "unknown simulator setting 'colour'"),
        ("m", {"x-sim-token-delay-ms": "soon"}, "delay_ms must be an integer"),
    ],
)
def test_bad_settings_say_what_is_wrong(model: str, headers: dict[str, str], message: str) -> None:
    with pytest.raises(BadBehaviour, match=message):
        behaviour_for(model, headers, DEFAULT)
