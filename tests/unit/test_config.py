"""Configuration: file defaults, TIERMESH_* overrides, and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.inference import config as inference_config
from services.runtime import config
from services.runtime.config import ConfigError


def test_defaults_come_from_the_repo_file() -> None:
    tree = config.load(environ={})
    assert config.endpoint(tree, "router") == ("127.0.0.1", 50051)
    assert config.endpoint(tree, "envoy") == ("127.0.0.1", 8080)


def test_environment_overrides_nest_and_parse_scalars() -> None:
    tree = config.load(environ={"TIERMESH_SERVICES__ROUTER__PORT": "6001", "TIERMESH_SIMULATOR__TOKEN_DELAY_MS": "2.5"})
    assert config.endpoint(tree, "router") == ("127.0.0.1", 6001)
    assert tree["simulator"]["token_delay_ms"] == 2.5
    assert config.endpoint(tree, "inference") == ("127.0.0.1", 50052)  # siblings survive


def test_bad_port_is_a_clear_error() -> None:
    tree = config.load(environ={"TIERMESH_SERVICES__ROUTER__PORT": "http"})
    with pytest.raises(ConfigError, match=r"services.router.port: must be an integer from 1 to 65535, got 'http'"):
        config.endpoint(tree, "router")


def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("services: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(bad, environ={})


def test_tiers_use_the_simulator_without_keys_and_real_models_with_them() -> None:
    tree = config.load(environ={})
    offline = inference_config.load(tree, environ={})
    assert {t: [d.provider for d in deps] for t, deps in offline.tiers.items()} == {
        1: ["simulator"],
        2: ["simulator"],
        3: ["simulator"],
        4: ["simulator"],
    }
    keyed = inference_config.load(tree, environ={"ANTHROPIC_API_KEY": "k"})
    assert [d.name for d in keyed.tiers[3]] == ["claude-sonnet"]
    assert [d.name for d in keyed.tiers[1]] == ["sim-fast"]  # no Anthropic model in tier 1 by default


def test_cost_is_exact_integer_micro_dollars() -> None:
    tree = config.load(environ={})
    sim = inference_config.load(tree, environ={}).tiers[4][0]  # $15 in / $75 out per million tokens
    assert sim.input_micro_usd_per_mtok == 15_000_000
    assert sim.cost_micro_usd(1_000_000, 0) == 15_000_000
    assert sim.cost_micro_usd(10, 48) == 150 + 3600
    assert sim.cost_micro_usd(1, 0) == 15


def test_invalid_catalog_fails_fast() -> None:
    tree = config.load(
        environ={"TIERMESH_INFERENCE__TIERS__2": "[{name: x, provider: nope, model: m, context_window: 1}]"}
    )
    with pytest.raises(ConfigError, match=r"inference.tiers.2\[0\].provider: must be one of"):
        inference_config.load(tree, environ={})
    tree = config.load(environ={"TIERMESH_INFERENCE__TIERS__5": "[]"})
    with pytest.raises(ConfigError, match="unknown tier"):
        inference_config.load(tree, environ={})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"TIERMESH_INFERENSE__REQUEST_TIMEOUT_S": "5"}, r"^inferense: unknown key; did you mean 'inference'\?$"),
        (
            {"TIERMESH_INFERENCE__CACHE__NAMESAPCE": "x"},
            r"^inference\.cache\.namesapce: unknown key; did you mean 'namespace'\?$",
        ),
        (
            {"TIERMESH_INFERENCE__TIERS__1": "[{name: a, provider: simulator, model: m, context_window: 9, rmp: 3}]"},
            r"^inference\.tiers\.1\[0\]\.rmp: unknown key; did you mean 'rpm'\?$",
        ),
        ({"TIERMESH_SERVICES__ROUTR__PORT": "1"}, r"^services\.routr: unknown key; did you mean 'router'\?$"),
        ({"TIERMESH_ROUTER__KNOWLEDGE__TOPK": "3"}, r"^router\.knowledge\.topk: unknown key; did you mean 'top_k'\?$"),
        ({"TIERMESH_TLS__ENABLE": "false"}, r"^tls\.enable: unknown key; did you mean 'enabled'\?$"),
        ({"TIERMESH_ZZZ": "1"}, r"^zzz: unknown key; valid keys are analytics, auth, "),
    ],
)
def test_a_misspelt_key_stops_the_start_with_its_path_and_the_nearest_name(
    override: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        config.load(environ=override)


def test_a_misspelt_key_in_the_file_is_refused_too(tmp_path: Path) -> None:
    path = tmp_path / "tiermesh.yaml"
    path.write_text("analytics:\n  budgets:\n    acton: refuse\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"analytics\.budgets\.acton: unknown key; did you mean 'action'"):
        config.load(path, environ={})


def test_variables_that_are_not_overrides_are_not_taken_for_keys() -> None:
    tree = config.load(environ={"TIERMESH_DATABASE_URL": "postgresql://x/y", "TIERMESH_TOKEN": "t"})
    assert "database_url" not in tree and "token" not in tree


@pytest.mark.parametrize("raw", ["'false'", "'no'", "0", "off-ish"])
def test_booleans_go_through_one_validator(raw: str, tmp_path: Path) -> None:
    # A quoted "false" is a string, and any non-empty string would read as true.
    tree = config.load(environ={"TIERMESH_INFERENCE__CACHE__ENABLED": raw})
    with pytest.raises(ConfigError, match=r"inference\.cache\.enabled: must be true or false"):
        inference_config.load(tree, environ={})
    tree = config.load(environ={"TIERMESH_RATELIMIT__FAILURE_MODE_DENY": raw, "TIERMESH_DATA_DIR": str(tmp_path)})
    from gateway import envoy

    with pytest.raises(ConfigError, match=r"ratelimit\.failure_mode_deny: must be true or false"):
        envoy.build(tree)


def test_the_router_ends_streams_before_the_edge_would_cut_them() -> None:
    from services.router.server import max_deadline_s

    assert max_deadline_s(config.load(environ={})) < 600
    tree = config.load(environ={"TIERMESH_ROUTER__MAX_DEADLINE_S": "600"})
    with pytest.raises(ConfigError, match=r"router\.max_deadline_s: 600 must be shorter than envoy\.max_stream"):
        max_deadline_s(tree)


@pytest.mark.parametrize(
    ("key", "raw", "message"),
    [
        ("DOCUMENT_WEIGHT", "-0.1", r"knowledge\.search\.document_weight: .*0"),
        ("DOCUMENT_WEIGHT", "lots", r"knowledge\.search\.document_weight: "),
        ("DOCUMENT_PASSAGES", "0", r"knowledge\.search\.document_passages: .*1"),
        (
            "DOCUMENT_PASSAGE",
            "2",
            r"knowledge\.search\.document_passage: unknown key; did you mean 'document_passages'",
        ),
    ],
)
def test_the_article_blend_settings_are_checked_at_start(key: str, raw: str, message: str) -> None:
    from services.knowledge import config as knowledge_config

    with pytest.raises(ConfigError, match=message):
        knowledge_config.load(config.load(environ={f"TIERMESH_KNOWLEDGE__SEARCH__{key}": raw}), environ={})


def test_the_shipped_search_blends_each_passage_with_its_article() -> None:
    from services.knowledge import config as knowledge_config

    cfg = knowledge_config.load(config.load(environ={}), environ={})
    assert cfg.document_weight > 0 and cfg.document_passages >= 1
    off = knowledge_config.load(config.load(environ={"TIERMESH_KNOWLEDGE__SEARCH__DOCUMENT_WEIGHT": "0"}), environ={})
    assert off.document_weight == 0
