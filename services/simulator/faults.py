"""How a request to the simulator behaves: answer length, token delay and injected fault.

Chosen per request, by the model name or by headers (headers win):

    model name segments after `:`         header
    fault=500                             x-sim-fault: 500          HTTP 500
    fault=429  retry_after=2              x-sim-fault: 429          HTTP 429 with Retry-After
    fault=hang                            x-sim-fault: hang         never answers (until the client leaves)
    fault=cut  cut_after=N                x-sim-fault: cut:N        stream cut after N tokens (0 = before the first)
    delay_ms=20                           x-sim-token-delay-ms: 20  delay before each token
    tokens=40                             x-sim-tokens: 40          answer length in tokens
    ctx=4096                              x-sim-context-window: N   prompts longer than N tokens get HTTP 400
    usage=off                             x-sim-usage: off          never report usage (like some providers)

For example `sim-fast:fault=cut:cut_after=5` or `sim-premium:delay_ms=50`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

FAULTS = ("none", "500", "429", "hang", "cut")


class BadBehaviour(ValueError):
    """A model-name segment or header asks for a behaviour the simulator does not have."""


@dataclass(frozen=True)
class Behaviour:
    fault: str = "none"
    cut_after: int = 0
    retry_after_s: int = 1
    token_delay_ms: float = 0.0
    tokens: int = 48
    context_window: int = 128_000
    usage: bool = True


def _int(name: str, raw: str, lo: int = 0, hi: int = 1_000_000) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise BadBehaviour(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise BadBehaviour(f"{name} must be from {lo} to {hi}, got {value}")
    return value


def _apply(b: Behaviour, key: str, value: str) -> Behaviour:
    if key == "fault":
        if value.startswith("cut") and ":" in value:
            return replace(b, fault="cut", cut_after=_int("cut_after", value.split(":", 1)[1]))
        if value not in FAULTS:
            raise BadBehaviour(f"fault must be one of {', '.join(FAULTS)}, got {value!r}")
        return replace(b, fault=value)
    if key == "cut_after":
        return replace(b, cut_after=_int(key, value))
    if key == "retry_after":
        return replace(b, retry_after_s=_int(key, value, 0, 3600))
    if key == "delay_ms":
        return replace(b, token_delay_ms=float(_int(key, value, 0, 60_000)))
    if key == "tokens":
        return replace(b, tokens=_int(key, value, 1, 100_000))
    if key == "ctx":
        return replace(b, context_window=_int(key, value, 1, 10_000_000))
    if key == "usage":
        if value not in ("on", "off"):
            raise BadBehaviour(f"usage must be on or off, got {value!r}")
        return replace(b, usage=value == "on")
    raise BadBehaviour(f"unknown simulator setting {key!r}")


HEADERS = {
    "x-sim-fault": "fault",
    "x-sim-retry-after": "retry_after",
    "x-sim-token-delay-ms": "delay_ms",
    "x-sim-tokens": "tokens",
    "x-sim-context-window": "ctx",
    "x-sim-usage": "usage",
}


def behaviour_for(model: str, headers: Mapping[str, str], default: Behaviour) -> Behaviour:
    """The behaviour asked for by `model` segments, then by `x-sim-*` headers."""
    b = default
    parts = model.split(":")[1:]
    i = 0
    while i < len(parts):
        seg = parts[i]
        if "=" not in seg:
            raise BadBehaviour(f"model segment {seg!r} is not key=value")
        key, value = seg.split("=", 1)
        # `fault=cut:3` arrives split as ["fault=cut", "3"]
        if key == "fault" and value == "cut" and i + 1 < len(parts) and parts[i + 1].isdigit():
            value = f"cut:{parts[i + 1]}"
            i += 1
        b = _apply(b, key, value)
        i += 1
    for header, key in HEADERS.items():
        if header in headers:
            b = _apply(b, key, headers[header].strip())
    return b
