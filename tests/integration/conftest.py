"""One real mesh (simulator, Inference, Router, Envoy) shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.mesh import Mesh, start_mesh

# 48 tokens at 25 ms each: an answer takes ~1.2 s to produce, long enough to observe streaming.
TOKEN_DELAY_MS = "25"


@pytest.fixture(scope="session")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    data_dir: Path = tmp_path_factory.mktemp("mesh")
    m = await start_mesh(data_dir, TIERMESH_SIMULATOR__TOKEN_DELAY_MS=TOKEN_DELAY_MS)
    yield m
    await m.sup.stop()
