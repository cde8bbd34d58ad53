"""A person in a browser: each scenario drives Debian's chromium (playwright-core) against the web
app's production build and the real mesh behind Envoy. The scenarios are web/e2e/*.test.mjs;
screenshots of each state land in web/test-results/."""

from __future__ import annotations

import pytest

from services.cli.supervisor import WEB_DIR
from tests.e2e.conftest import Browser

pytestmark = pytest.mark.integration

SCENARIOS = sorted(p.name.removesuffix(".test.mjs") for p in (WEB_DIR / "e2e").glob("*.test.mjs"))


def test_every_scenario_the_app_promises_is_there() -> None:
    assert set(SCENARIOS) >= {
        "greeting-streams",
        "technical-vip",
        "citations",
        "stop",
        "restart",
        "rate-limit",
        "spend",
        "operations",
        "accessibility",
        "conversation",
        "safe-markdown",
        "oidc",
        "errors",
    }


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_scenario(browser: Browser, scenario: str) -> None:
    code, output = await browser.run(scenario)
    print(output)
    assert code == 0, f"{scenario} failed:\n{output[-8000:]}"
