"""Loads `config/tiermesh.yaml`, applies `TIERMESH_*` environment overrides, and hands out sections.

Overrides: `TIERMESH_A__B__C=value` sets `a.b.c` (double underscore nests, names are lower-cased)
and the value is parsed as a YAML scalar, so `TIERMESH_SERVICES__ROUTER__PORT=6001` is an int.
`TIERMESH_CONFIG` points at another file. Unknown keys are kept (sections validate their own).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "TIERMESH_"
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
        if not name.startswith(ENV_PREFIX) or name == "TIERMESH_CONFIG":
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
    return _merge(data, _env_overrides(env))


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
    value = tree.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: must be true or false, got {value!r}")
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
    "simulator": 4010,
    "envoy": 8080,
    "envoy_admin": 9901,
}


def endpoint(tree: Mapping[str, Any], name: str) -> tuple[str, int]:
    """(host, port) where the named part listens, from `services.<name>.host/port`."""
    node = section(tree, "services", name)
    where = f"services.{name}"
    host = get_str(node, "host", "127.0.0.1", where=where)
    port = get_int(node, "port", SERVICE_DEFAULT_PORTS[name], where=where, lo=1, hi=65535)
    return host, port


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
    node = section(tree, "services", name)
    where = f"services.{name}"
    host = get_str(node, "host", "127.0.0.1", where=where)
    port = get_int(node, "metrics_port", METRICS_DEFAULT_PORTS.get(name, 0), where=where, lo=0, hi=65535)
    return host, port


# Channels to parts that may come and go (Knowledge, Analytics): reconnect soon after they are
# back rather than after gRPC's default backoff of up to two minutes.
QUICK_RECONNECT = (("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000))


def target(tree: Mapping[str, Any], name: str) -> str:
    """A gRPC target string for the named part (`host:port`)."""
    host, port = endpoint(tree, name)
    return f"{host}:{port}"
