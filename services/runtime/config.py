"""Loads `config/tiermesh.yaml`, applies `TIERMESH_*` environment overrides, and hands out sections.

Overrides: `TIERMESH_A__B__C=value` sets `a.b.c` (double underscore nests, names are lower-cased)
and the value is parsed as a YAML scalar, so `TIERMESH_SERVICES__ROUTER__PORT=6001` is an int.
`TIERMESH_CONFIG` points at another file.

Every key is checked against `SCHEMA` when the tree is loaded: a misspelt key (`rmp:` for `rpm:`)
would otherwise be silently ignored and turn a setting off, so it stops the process at start with
the key's path and the nearest valid name. Each section still validates its own values.
"""

from __future__ import annotations

import copy
import difflib
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "TIERMESH_"
# TIERMESH_* variables that are not overrides of a key: the file to load, the database URL
# (a secret, kept out of the file) and the CLI's bearer token.
NOT_OVERRIDES = frozenset({"TIERMESH_CONFIG", "TIERMESH_DATABASE_URL", "TIERMESH_TOKEN"})
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PATH = REPO_ROOT / "config" / "tiermesh.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message says which key and what is expected."""


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in NOT_OVERRIDES:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{name}: not a valid value: {exc}") from None
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: conflicts with another TIERMESH_ override")
        node[path[-1]] = value
    return tree


class MapOf:
    """A mapping whose keys are free (user ids, tier numbers) and whose values follow `spec`."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec


class ListOf:
    """A list whose items follow `spec`."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec


ANY = None  # a value checked by the section that owns it (a scalar, or a shape of its own)
_PART_KEYS = frozenset({"host", "port", "metrics_port", "health_port", "replicas"})
_DEPLOYMENT = frozenset(
    {
        "name",
        "provider",
        "model",
        "api_key_env",
        "api_base",
        "input_usd_per_mtok",
        "output_usd_per_mtok",
        "context_window",
        "rpm",
        "tpm",
    }
)

# Every key tiermesh reads. A `frozenset` is a mapping of plain values; a `dict` a mapping of
# sections; `MapOf` and `ListOf` hold repeated shapes; `ANY` is left to the owning section.
SCHEMA: dict[str, Any] = {
    "data_dir": ANY,
    "log_level": ANY,
    "shutdown_grace_s": ANY,
    "services": {
        name: _PART_KEYS
        for name in (
            "router",
            "inference",
            "knowledge",
            "analytics",
            "ratelimit",
            "openai",
            "simulator",
            "envoy",
            "envoy_admin",
            "web",
        )
    },
    "tls": frozenset({"enabled", "dir", "ca_file", "cert_file", "key_file", "cert_days"}),
    "observability": {"tracing": frozenset({"exporter", "endpoint", "file", "sample_ratio"})},
    "envoy": frozenset(
        {
            "max_stream_duration_s",
            "max_connections",
            "cors_origins",
            "trusted_proxy_hops",
            "request_timeout_s",
            "response_start_timeout_s",
        }
    ),
    "simulator": frozenset({"token_delay_ms", "answer_tokens"}),
    "openai": frozenset({"timeout_s"}),
    "router": {
        "deadline_s": ANY,
        "max_deadline_s": ANY,
        "policy_path": ANY,
        "models_path": ANY,
        "audit": frozenset({"sample_rate", "messages", "linger_ms"}),
        "second_opinion": frozenset({"enabled", "gate", "mix", "threads", "max_waiting"}),
        "knowledge": frozenset(
            {
                "enabled",
                "intents",
                "collection",
                "top_k",
                "passages_per_document",
                "min_score",
                "deadline_ms",
                "max_context_chars",
                "failures_to_pause",
                "pause_s",
            }
        ),
    },
    "inference": {
        "analytics": frozenset({"enabled", "queue_size", "linger_ms"}),
        "simulator_base_url": ANY,
        "max_connections": ANY,
        "request_timeout_s": ANY,
        "first_token_timeout_s": ANY,
        "health_interval_s": ANY,
        "flush_interval_ms": ANY,
        "retry": frozenset({"max_attempts", "base_delay_s", "max_delay_s", "budget_ratio", "budget_max_tokens"}),
        "breaker": frozenset(
            {
                "window_s",
                "min_calls",
                "failure_rate",
                "consecutive_failures",
                "open_s",
                "max_open_s",
                "half_open_trials",
            }
        ),
        "cache": frozenset({"enabled", "url", "ttl_s", "namespace"}),
        "default_response": frozenset({"enabled", "text"}),
        "tiers": MapOf(ListOf(_DEPLOYMENT)),
    },
    "knowledge": {
        "default_collection": ANY,
        "qdrant": frozenset({"path", "url", "api_key_env", "collection"}),
        "embedding": frozenset({"provider", "model", "dimension", "api_key_env", "api_base", "batch_size", "threads"}),
        "chunking": frozenset({"max_tokens", "overlap_tokens"}),
        "search": frozenset(
            {
                "semantic_weight",
                "keyword_saturation",
                "candidates",
                "synonym_weight",
                "cross_language_boost",
                "document_weight",
                "document_passages",
            }
        ),
        "synonyms_path": ANY,
    },
    "analytics": {
        "database_url": ANY,
        "create_database": ANY,
        "pool_size": ANY,
        "buffer_size": ANY,
        "batch_size": ANY,
        "flush_interval_s": ANY,
        "retry_max_s": ANY,
        "stall_after_s": ANY,
        "spill_path": ANY,
        "dead_letter_path": ANY,
        "rollup_interval_s": ANY,
        "retention_days": frozenset({"events", "minute", "hour"}),
        "budgets": {
            "action": ANY,
            "cache_s": ANY,
            "users": MapOf(ANY),
            "per_user_by_segment": MapOf(ANY),
            "segments": MapOf(ANY),
            "teams": MapOf(ANY),
            "per_team": ANY,
        },
    },
    "auth": frozenset({"issuer", "audience", "jwks_uri", "jwks_cache_s"}),
    "ratelimit": {
        "redis_url": ANY,
        "redis_timeout_ms": ANY,
        "failure_mode_deny": ANY,
        "timeout_ms": ANY,
        "max_hits_addend": ANY,
        "local_backstop": frozenset({"max_tokens", "fill_interval_s"}),
        "config": ANY,  # envoyproxy/ratelimit's shape, checked key by key by gateway.ratelimit.config
    },
}


def unknown_key(key: str, known: Any, where: str) -> ConfigError:
    """The error for a key that is not among `known`, naming the nearest valid one."""
    names = sorted(str(k) for k in known)
    close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys are {', '.join(names)}"
    return ConfigError(f"{where}{'.' if where else ''}{key}: unknown key; {hint}")


def check_keys(node: Any, spec: Any = SCHEMA, where: str = "") -> None:
    """Raise ConfigError for the first key in `node` that `spec` does not know."""
    if spec is ANY:
        return
    if isinstance(spec, MapOf):
        if isinstance(node, Mapping):
            for key, value in node.items():
                check_keys(value, spec.spec, f"{where}.{key}" if where else str(key))
        return
    if isinstance(spec, ListOf):
        if isinstance(node, list):
            for i, item in enumerate(node):
                check_keys(item, spec.spec, f"{where}[{i}]")
        return
    if not isinstance(node, Mapping):
        return  # a wrong type is the owning section's error to report, with what it expects
    for key, value in node.items():
        if key not in spec:
            raise unknown_key(str(key), spec, where)
        if isinstance(spec, dict):
            check_keys(value, spec[key], f"{where}.{key}" if where else str(key))


def load(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return the merged configuration tree (file, then environment overrides)."""
    env = os.environ if environ is None else environ
    file = Path(path or env.get("TIERMESH_CONFIG") or DEFAULT_PATH)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist (set TIERMESH_CONFIG)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {file} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {file} must hold a mapping at the top level")
    tree = _merge(data, _env_overrides(env))
    check_keys(tree)
    return tree


def section(tree: Mapping[str, Any], *path: str) -> dict[str, Any]:
    """Return the mapping at `path` (an empty one when absent); fail when it is not a mapping."""
    node: Any = tree
    for part in path:
        node = node.get(part, {}) if isinstance(node, Mapping) else None
        if not isinstance(node, Mapping):
            raise ConfigError(f"{'.'.join(path)}: must be a mapping")
    return dict(node)


def get_int(tree: Mapping[str, Any], key: str, default: int, *, where: str, lo: int = 0, hi: int = 2**31) -> int:
    value = tree.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{where}.{key}: must be an integer from {lo} to {hi}, got {value!r}")
    return value


def get_float(
    tree: Mapping[str, Any], key: str, default: float, *, where: str, lo: float = 0.0, hi: float = 1e9
) -> float:
    value = tree.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= float(value) <= hi:
        raise ConfigError(f"{where}.{key}: must be a number from {lo} to {hi}, got {value!r}")
    return float(value)


def get_bool(tree: Mapping[str, Any], key: str, default: bool, *, where: str) -> bool:
    """The one reader of boolean settings: YAML's true/false only (`"false"` as a string, 0 or
    `off` in quotes would otherwise read as true)."""
    value = tree.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}{'.' if where else ''}{key}: must be true or false, got {value!r}")
    return value


def get_str(tree: Mapping[str, Any], key: str, default: str, *, where: str) -> str:
    value = tree.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key}: must be a string, got {value!r}")
    return value


def usd_to_micro(value: Any, where: str, what: str = "an amount in USD") -> int:
    """A USD amount from config as integer micro-dollars (money is never a float), rounded half up."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: must be {what}, got {value!r}")
    try:
        amount = Decimal(str(value))
    except ArithmeticError:
        raise ConfigError(f"{where}: must be {what}, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ConfigError(f"{where}: must be {what}, not negative, got {value!r}")
    return int((amount * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def data_dir(tree: Mapping[str, Any]) -> Path:
    """The folder for generated files (Envoy config, dev keys, local Qdrant); created on demand."""
    raw = get_str(tree, "data_dir", ".tiermesh", where="")
    path = Path(raw) if Path(raw).is_absolute() else REPO_ROOT / raw
    path.mkdir(parents=True, exist_ok=True)
    return path


SERVICE_DEFAULT_PORTS = {
    "router": 50051,
    "inference": 50052,
    "knowledge": 50053,
    "analytics": 50054,
    "ratelimit": 50055,
    "openai": 8090,
    "simulator": 4010,
    "envoy": 8080,
    "envoy_admin": 9901,
    "web": 3000,
}


def _port_of(tree: Mapping[str, Any], name: str, key: str, default: int, lo: int) -> tuple[str, int]:
    node = section(tree, "services", name)
    where = f"services.{name}"
    return get_str(node, "host", "127.0.0.1", where=where), get_int(node, key, default, where=where, lo=lo, hi=65535)


def endpoint(tree: Mapping[str, Any], name: str) -> tuple[str, int]:
    """(host, port) where the named part listens, from `services.<name>.host/port`."""
    return _port_of(tree, name, "port", SERVICE_DEFAULT_PORTS[name], lo=1)


# Where each service serves Prometheus metrics (`/metrics`), from `services.<name>.metrics_port`.
METRICS_DEFAULT_PORTS = {
    "router": 9101,
    "inference": 9102,
    "knowledge": 9103,
    "analytics": 9104,
    "ratelimit": 9105,
}


def metrics_endpoint(tree: Mapping[str, Any], name: str) -> tuple[str, int]:
    """(host, port) of the named service's metrics endpoint; port 0 means it serves none."""
    return _port_of(tree, name, "metrics_port", METRICS_DEFAULT_PORTS.get(name, 0), lo=0)


# Where each service serves grpc.health.v1 alone, without TLS, for probes that cannot present a
# certificate (`services.<name>.health_port`).
HEALTH_DEFAULT_PORTS = {
    "router": 50061,
    "inference": 50062,
    "knowledge": 50063,
    "analytics": 50064,
    "ratelimit": 50065,
    # The OpenAI-compatible API answers `GET /health` here (HTTP, not gRPC).
    "openai": 8091,
}


def health_endpoint(tree: Mapping[str, Any], name: str) -> tuple[str, int]:
    """(host, port) of the named service's plaintext health port."""
    return _port_of(tree, name, "health_port", HEALTH_DEFAULT_PORTS[name], lo=1)


def deployment_tiers(tree: Mapping[str, Any]) -> dict[str, int]:
    """Each configured deployment's name and its tier (`inference.tiers`), for the parts that let
    a caller pin one; Inference checks the deployments themselves."""
    out: dict[str, int] = {}
    raw = section(tree, "inference").get("tiers")
    for tier, items in raw.items() if isinstance(raw, Mapping) else ():
        for item in items if isinstance(items, list) else ():
            if isinstance(item, Mapping) and isinstance(item.get("name"), str) and str(tier).isdigit():
                out[item["name"]] = int(tier)
    return out


def default_collection(tree: Mapping[str, Any]) -> str:
    """The knowledge collection chats search and `tiermesh ingest/search` use when none is named
    (`knowledge.default_collection`)."""
    collection = get_str(section(tree, "knowledge"), "default_collection", "default", where="knowledge")
    if not 1 <= len(collection) <= 128:
        raise ConfigError(f"knowledge.default_collection: must be 1 to 128 characters, got {collection!r}")
    return collection


# Channels to parts that may come and go (Knowledge, Analytics): reconnect soon after they are
# back rather than after gRPC's default backoff of up to two minutes.
QUICK_RECONNECT = (("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000))


def target(tree: Mapping[str, Any], name: str) -> str:
    """A gRPC target string for the named part (`host:port`)."""
    host, port = endpoint(tree, name)
    return f"{host}:{port}"


@dataclass(frozen=True)
class Replica:
    """Where one replica of a service listens: `services.<name>` is the first, and
    `services.<name>.replicas` lists the others on the same host (`tiermesh up --replicas`)."""

    host: str
    port: int
    metrics_port: int
    health_port: int


def replicas(tree: Mapping[str, Any], name: str) -> list[Replica]:
    """Every replica of the named service, the configured one first."""
    host, port = endpoint(tree, name)
    first = Replica(
        host,
        port,
        metrics_endpoint(tree, name)[1] if name in METRICS_DEFAULT_PORTS else 0,
        health_endpoint(tree, name)[1] if name in HEALTH_DEFAULT_PORTS else 0,
    )
    raw = section(tree, "services", name).get("replicas") or []
    where = f"services.{name}.replicas"
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: must be a list of {{port, metrics_port, health_port}}")
    out = [first]
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or set(item) - {"port", "metrics_port", "health_port"}:
            raise ConfigError(f"{where}[{i}]: must be a mapping of port, metrics_port and health_port")
        out.append(
            Replica(
                host,
                get_int(item, "port", 0, where=f"{where}[{i}]", lo=1, hi=65535),
                get_int(item, "metrics_port", 0, where=f"{where}[{i}]", lo=0, hi=65535),
                get_int(item, "health_port", 0, where=f"{where}[{i}]", lo=0, hi=65535),
            )
        )
    return out


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def balanced_target(tree: Mapping[str, Any], name: str) -> tuple[str, bool]:
    """A gRPC target for calls to every replica of `name`, and whether the caller should balance
    calls across the addresses it resolves to: the replicas' addresses, or a DNS name (a
    Kubernetes headless Service resolves to every pod)."""
    reps = replicas(tree, name)
    if not is_ip(reps[0].host):
        return f"dns:///{reps[0].host}:{reps[0].port}", True
    if len(reps) == 1:
        return f"{reps[0].host}:{reps[0].port}", False
    scheme = "ipv6" if ":" in reps[0].host else "ipv4"
    hosts = [f"[{r.host}]:{r.port}" if scheme == "ipv6" else f"{r.host}:{r.port}" for r in reps]
    return f"{scheme}:{','.join(hosts)}", True
