"""Inference settings: the model catalog per tier, validated at start (bad catalog -> clear error)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.inference.breaker import BreakerSettings
from services.inference.retry import RetrySettings
from services.runtime import config
from services.runtime.config import ConfigError

PROVIDERS = ("simulator", "openai", "anthropic", "gemini", "openai_compatible")


@dataclass(frozen=True)
class Deployment:
    """One model a tier can call. Prices are integer micro-dollars per million tokens."""

    name: str
    tier: int
    provider: str
    model: str
    input_micro_usd_per_mtok: int
    output_micro_usd_per_mtok: int
    context_window: int
    api_base: str | None = None
    api_key_env: str | None = None
    rpm: int | None = None  # requests per minute this deployment accepts (provider quota)
    tpm: int | None = None  # tokens (in + out) per minute

    def cost_micro_usd(self, prompt_tokens: int, completion_tokens: int) -> int:
        """Exact cost, rounded half up to a whole micro-dollar."""
        total = prompt_tokens * self.input_micro_usd_per_mtok + completion_tokens * self.output_micro_usd_per_mtok
        return (total + 500_000) // 1_000_000

    @property
    def litellm_model(self) -> str:
        if self.provider in ("simulator", "openai_compatible"):
            return "openai/" + self.model
        return self.model

    @property
    def api_key(self) -> str | None:
        if self.provider == "simulator":
            return "simulator"
        return os.environ.get(self.api_key_env) if self.api_key_env else None


@dataclass(frozen=True)
class InferenceConfig:
    tiers: Mapping[int, tuple[Deployment, ...]]
    max_connections: int
    request_timeout_s: float
    first_token_timeout_s: float = 20.0
    retry: RetrySettings = field(default_factory=RetrySettings)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    cache_url: str = ""
    cache_ttl_s: int = 3600
    cache_namespace: str = ""
    default_response: str | None = None
    health_interval_s: float = 15.0
    # Text that arrives within this long of the last text sent goes out with the next message.
    flush_interval_s: float = 0.0


def _micro(price: Any, where: str) -> int:
    return config.usd_to_micro(price, where, "a price in USD per million tokens")


def _quota(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where}: must be a positive integer (per minute), got {value!r}")
    return value


def _deployment(raw: Any, tier: int, i: int, sim_base: str) -> Deployment:
    where = f"inference.tiers.{tier}[{i}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping")
    for key in ("name", "provider", "model"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigError(f"{where}.{key}: is required (a non-empty string)")
    provider = raw["provider"]
    if provider not in PROVIDERS:
        raise ConfigError(f"{where}.provider: must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    window = raw.get("context_window")
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        raise ConfigError(f"{where}.context_window: must be a positive integer (tokens), got {window!r}")
    api_base = raw.get("api_base") or (sim_base if provider == "simulator" else None)
    if provider == "openai_compatible" and not api_base:
        raise ConfigError(f"{where}.api_base: is required for provider openai_compatible")
    return Deployment(
        name=raw["name"],
        tier=tier,
        provider=provider,
        model=raw["model"],
        input_micro_usd_per_mtok=_micro(raw.get("input_usd_per_mtok"), f"{where}.input_usd_per_mtok"),
        output_micro_usd_per_mtok=_micro(raw.get("output_usd_per_mtok"), f"{where}.output_usd_per_mtok"),
        context_window=window,
        api_base=api_base,
        api_key_env=raw.get("api_key_env"),
        rpm=_quota(raw.get("rpm"), f"{where}.rpm"),
        tpm=_quota(raw.get("tpm"), f"{where}.tpm"),
    )


def load(tree: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> InferenceConfig:
    env = os.environ if environ is None else environ
    node = config.section(tree, "inference")
    sim_base = config.get_str(node, "simulator_base_url", "", where="inference")
    if not sim_base:
        host, port = config.endpoint(tree, "simulator")
        sim_base = f"http://{host}:{port}/v1"
    raw_tiers = node.get("tiers")
    if not isinstance(raw_tiers, Mapping):
        raise ConfigError("inference.tiers: must map each tier (1-4) to a list of deployments")
    tiers: dict[int, tuple[Deployment, ...]] = {}
    names: set[str] = set()
    for key, items in raw_tiers.items():
        tier = int(key) if str(key).isdigit() else -1
        if tier not in (1, 2, 3, 4):
            raise ConfigError(f"inference.tiers: unknown tier {key!r}; tiers are 1, 2, 3 and 4")
        if not isinstance(items, list) or not items:
            raise ConfigError(f"inference.tiers.{tier}: must be a non-empty list of deployments")
        deps = [_deployment(raw, tier, i, sim_base) for i, raw in enumerate(items)]
        for d in deps:
            if d.name in names:
                raise ConfigError(f"inference.tiers.{tier}: deployment name {d.name!r} is used twice")
            names.add(d.name)
        keyed = [d for d in deps if d.api_key_env and env.get(d.api_key_env)]
        chosen = keyed or [
            d for d in deps if d.provider == "simulator" or (not d.api_key_env and d.provider != "simulator")
        ]
        if not chosen:
            raise ConfigError(
                f"inference.tiers.{tier}: no deployment is usable: set one of "
                + ", ".join(sorted({d.api_key_env for d in deps if d.api_key_env}))
                + " or add a simulator deployment"
            )
        tiers[tier] = tuple(chosen)
    missing = [t for t in (1, 2, 3, 4) if t not in tiers]
    if missing:
        raise ConfigError(f"inference.tiers: tiers {missing} have no deployments")
    retry = config.section(node, "retry")
    brk = config.section(node, "breaker")
    cache = config.section(node, "cache")
    default = config.section(node, "default_response")
    w = "inference.retry"
    wb = "inference.breaker"
    return InferenceConfig(
        tiers=tiers,
        max_connections=config.get_int(node, "max_connections", 200, where="inference", lo=1, hi=100_000),
        request_timeout_s=config.get_float(node, "request_timeout_s", 120.0, where="inference", lo=0.1, hi=3600),
        first_token_timeout_s=config.get_float(
            node, "first_token_timeout_s", 20.0, where="inference", lo=0.05, hi=3600
        ),
        retry=RetrySettings(
            max_attempts=config.get_int(retry, "max_attempts", 2, where=w, lo=1, hi=10),
            base_delay_s=config.get_float(retry, "base_delay_s", 0.1, where=w, hi=60),
            max_delay_s=config.get_float(retry, "max_delay_s", 2.0, where=w, hi=600),
            budget_ratio=config.get_float(retry, "budget_ratio", 0.2, where=w, hi=1),
            budget_max_tokens=config.get_float(retry, "budget_max_tokens", 10.0, where=w, hi=1e6),
        ),
        breaker=BreakerSettings(
            window_s=config.get_float(brk, "window_s", 30.0, where=wb, lo=0.1, hi=3600),
            min_calls=config.get_int(brk, "min_calls", 10, where=wb, lo=1, hi=10_000),
            failure_rate=config.get_float(brk, "failure_rate", 0.5, where=wb, lo=0.01, hi=1),
            consecutive_failures=config.get_int(brk, "consecutive_failures", 5, where=wb, lo=1, hi=10_000),
            open_s=config.get_float(brk, "open_s", 5.0, where=wb, lo=0.01, hi=3600),
            max_open_s=config.get_float(brk, "max_open_s", 300.0, where=wb, lo=0.01, hi=86_400),
            half_open_trials=config.get_int(brk, "half_open_trials", 1, where=wb, lo=1, hi=1000),
        ),
        cache_url=(
            config.get_str(cache, "url", "", where="inference.cache")
            if config.get_bool(cache, "enabled", True, where="inference.cache")
            else ""
        ),
        cache_ttl_s=config.get_int(cache, "ttl_s", 3600, where="inference.cache", lo=1, hi=30 * 86_400),
        cache_namespace=config.get_str(cache, "namespace", "", where="inference.cache"),
        default_response=(
            config.get_str(default, "text", "", where="inference.default_response") or None
            if config.get_bool(default, "enabled", True, where="inference.default_response")
            else None
        ),
        health_interval_s=config.get_float(node, "health_interval_s", 15.0, where="inference", lo=0.1, hi=3600),
        flush_interval_s=config.get_int(node, "flush_interval_ms", 50, where="inference", lo=0, hi=1000) / 1000,
    )
