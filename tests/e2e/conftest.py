"""The browser tests' mesh: every part for real (Envoy, Router, Inference, Knowledge, Analytics,
RateLimit, the simulator with a per-token delay, PostgreSQL, Redis) and the web app's production
build, which Debian's chromium, driven by playwright-core, talks to as a person would.

Each scenario is a Node test file under web/e2e/ (playwright-core is a Node library); this
fixture starts the mesh once and tells each file where everything is through the environment."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.cli.knowledge import collect, ingest_documents
from services.cli.mesh import free_port
from services.cli.supervisor import PART_NAMES, WEB, WEB_DIR, web_built
from services.runtime import config
from tests.analytics.conftest import drop_database
from tests.integration.mesh import Mesh, deployment, start_mesh
from tests.security.conftest import limits_for_one_address

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HELPCENTER = config.REPO_ROOT / "data" / "knowledge" / "helpcenter"
# A few articles, so a question has near misses to be ranked above.
ARTICLES = ("pagamento-com-pix.pt", "boleto-bancario.pt", "cartao-de-credito-e-debito.pt", "paying-with-paypal.en")
BROKE_USER = "budget-spent"
STANDARD_PER_MINUTE = 4  # low, so the rate-limit scenario reaches it in a few chats


def _limits() -> str:
    """The repo's limits with the per-address one raised (every request of the suite comes from
    127.0.0.1) and a standard user's lowered."""
    descriptors = json.loads(limits_for_one_address())
    for d in descriptors:
        if d.get("value") == "standard":
            d["descriptors"][0]["rate_limit"]["requests_per_unit"] = STANDARD_PER_MINUTE
    return json.dumps(descriptors)


@dataclass
class Browser:
    mesh: Mesh
    web_url: str
    results: Path

    async def run(self, scenario: str, timeout_s: float = 180) -> tuple[int, str]:
        """Run one scenario file; (exit code, its output). Asynchronous, so the mesh's logs keep
        being read meanwhile."""
        env = {
            **os.environ,
            "TIERMESH_WEB_URL": self.web_url,
            "TIERMESH_EDGE_URL": f"http://{self.mesh.target('envoy')}",
            "TIERMESH_SIM_URL": self.mesh.sim_url,
            "TIERMESH_CHROMIUM": CHROMIUM,
            "TIERMESH_RESULTS": str(self.results),
            "TIERMESH_STANDARD_PER_MINUTE": str(STANDARD_PER_MINUTE),
            "TIERMESH_BROKE_USER": BROKE_USER,
        }
        proc = await asyncio.create_subprocess_exec(
            "node",
            "--test",
            "--test-reporter=spec",
            str(WEB_DIR / "e2e" / f"{scenario}.test.mjs"),
            cwd=WEB_DIR,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(timeout_s):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            out, _ = await proc.communicate()
            return -1, out.decode(errors="replace") + f"\n(gave up after {timeout_s} s)"
        return proc.returncode or 0, out.decode(errors="replace")


@pytest.fixture(scope="session")
def results() -> Iterator[Path]:
    """Screenshots of each state, kept as test artifacts."""
    folder = WEB_DIR / "test-results"
    folder.mkdir(exist_ok=True)
    yield folder


@pytest.fixture(scope="session")
async def browser(tmp_path_factory: pytest.TempPathFactory, results: Path) -> AsyncIterator[Browser]:
    if not web_built():
        pytest.fail("the web app is not built: run `make web` (`make test` does it first)")
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: run `make browser` (`make test` does it first)")
    database = f"tiermesh_test_{uuid.uuid4().hex[:12]}"
    web_port = free_port()
    origin = f"http://127.0.0.1:{web_port}"
    mesh = await start_mesh(
        tmp_path_factory.mktemp("e2e"),
        [*PART_NAMES, WEB],
        TIERMESH_SERVICES__WEB__PORT=str(web_port),
        TIERMESH_ENVOY__CORS_ORIGINS=json.dumps([origin]),
        TIERMESH_ANALYTICS__DATABASE_URL=f"postgresql://postgres@127.0.0.1:5432/{database}",
        TIERMESH_ANALYTICS__FLUSH_INTERVAL_S="0.05",
        TIERMESH_SIMULATOR__TOKEN_DELAY_MS="25",
        TIERMESH_SIMULATOR__ANSWER_TOKENS="60",
        TIERMESH_RATELIMIT__CONFIG__DESCRIPTORS=_limits(),
        # Tier 2's cheapest deployment breaks off after 12 tokens: its answer restarts on the next.
        TIERMESH_INFERENCE__TIERS__2=(
            f"[{deployment('sim-cut', 'sim-cut:fault=cut:12', 0.2)}, {deployment('sim-steady', 'sim-balanced', 0.4)}]"
        ),
        TIERMESH_INFERENCE__BREAKER="{consecutive_failures: 1000, min_calls: 1000}",
        # One user whose monthly budget is spent before they start (and refused, not downgraded).
        TIERMESH_ANALYTICS__BUDGETS=f"{{action: refuse, cache_s: 0, users: {{{BROKE_USER}: 0}}}}",
    )
    try:
        docs, skipped = collect([str(HELPCENTER / f"{name}.md") for name in ARTICLES], print)
        assert not skipped
        async with mesh.channel("knowledge") as channel:
            await ingest_documents(channel, "default", docs, print)
        yield Browser(mesh, origin, results)
    finally:
        await mesh.sup.stop()
        await drop_database(database)
