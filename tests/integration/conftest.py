"""One real mesh (simulator, Inference, Router, RateLimit, Envoy) shared by the integration tests."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.integration.mesh import Mesh, free_port, start_mesh

# 48 tokens at 25 ms each: an answer takes ~1.2 s to produce, long enough to observe streaming.
TOKEN_DELAY_MS = "25"
MESH_PARTS = ("simulator", "inference", "router", "ratelimit", "envoy")


@pytest.fixture(scope="session")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    data_dir: Path = tmp_path_factory.mktemp("mesh")
    # Knowledge (and its embedding model) runs only in the meshes of the tests that need it.
    m = await start_mesh(data_dir, MESH_PARTS, TIERMESH_SIMULATOR__TOKEN_DELAY_MS=TOKEN_DELAY_MS)
    yield m
    await m.sup.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A Redis of the test's own on a free port, for tests that stop it mid-test."""
    server = shutil.which("redis-server")
    assert server, "redis-server is needed (apt-get install redis-server)"
    port = free_port()
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield port, proc
    proc.kill()
    proc.wait()
