"""Rate limit rules: envoyproxy/ratelimit's shape, the most specific rule wins, one negative
fixture per validation error."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from gateway.ratelimit.config import parse
from services.runtime import config
from services.runtime.config import ConfigError


def default_rules() -> Any:
    return config.load(environ={})["ratelimit"]["config"]


def test_the_default_rules_limit_users_by_segment_and_clients_by_address() -> None:
    cfg = parse(default_rules())
    node, path = cfg.find([("segment", "vip"), ("user", "alice")])
    assert node is not None and node.limit is not None
    assert (node.limit.requests_per_unit, node.limit.unit, path) == (100, "minute", "segment_vip_user_alice")
    std, _ = cfg.find([("segment", "standard"), ("user", "bob")])
    assert std is not None and std.limit is not None and std.limit.requests_per_unit == 20
    ip, path = cfg.find([("remote_address", "10.0.0.7")])
    assert ip is not None and path == "remote_address_10.0.0.7"
    assert cfg.find([("segment", "gold"), ("user", "x")]) == (None, "")  # no rule: not limited
    assert cfg.find([("segment", "vip")]) == (None, "")  # a partial descriptor has no limit of its own


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("[]", r"ratelimit.config: must be a mapping"),
        ("{descriptors: [{key: a, rate_limit: {unit: second, requests_per_unit: 1}}]}", r"domain: is required"),
        ("{domain: d, descriptors: []}", r"descriptors: must be a non-empty list"),
        (
            "{domain: d, descriptors: [{value: x, rate_limit: {unit: second, requests_per_unit: 1}}]}",
            r"\.key: is required",
        ),
        ("{domain: d, descriptors: [{key: a}]}", r"needs a rate_limit or nested descriptors"),
        (
            "{domain: d, descriptors: [{key: a, rate_limit: {unit: fortnight, requests_per_unit: 1}}]}",
            r"unit: must be one of",
        ),
        (
            "{domain: d, descriptors: [{key: a, rate_limit: {unit: second, requests_per_unit: -1}}]}",
            r"requests_per_unit: must be",
        ),
        (
            "{domain: d, descriptors: [{key: a, colour: red, rate_limit: {unit: second, requests_per_unit: 1}}]}",
            r"unknown key",
        ),
        (
            "{domain: d, descriptors: [{key: a, value: 7, rate_limit: {unit: second, requests_per_unit: 1}}]}",
            r"value: must be a string",
        ),
    ],
)
def test_each_invalid_rule_is_refused_with_a_clear_error(raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(yaml.safe_load(raw))
