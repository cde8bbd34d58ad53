"""A fresh PostgreSQL database for the test run (dropped after), and an Analytics process on it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """The URL of a database that does not exist yet: Analytics creates and migrates it."""
    name = f"tiermesh_test_{uuid.uuid4().hex[:12]}"
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    await drop_database(name)


@pytest.fixture
async def fresh_database_url() -> AsyncIterator[str]:
    name = f"tiermesh_test_{uuid.uuid4().hex[:12]}"
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    await drop_database(name)
