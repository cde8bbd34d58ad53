"""A real Knowledge store (the local embedding model, Qdrant in embedded local mode) for the session,
and a real gRPC server in front of it."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from tiermesh.knowledge.v1 import knowledge_service_pb2 as pb
from tiermesh.knowledge.v1 import knowledge_service_pb2_grpc as pb_grpc

from services.knowledge import config as kconfig
from services.knowledge.server import build_store
from services.knowledge.servicer import KnowledgeServicer
from services.knowledge.store import KnowledgeStore
from services.runtime import config
from services.runtime.server import Service


@pytest.fixture(scope="session")
async def store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KnowledgeStore]:
    path: Path = tmp_path_factory.mktemp("qdrant")
    cfg = dataclasses.replace(kconfig.load(config.load(environ={})), qdrant_url="", qdrant_path=path)
    s = build_store(cfg)
    await s.open()
    yield s
    await s.close()


@pytest.fixture(scope="session")
async def knowledge(store: KnowledgeStore) -> AsyncIterator[pb_grpc.KnowledgeServiceStub]:
    service = Service(
        "knowledge",
        service_names=[pb.DESCRIPTOR.services_by_name["KnowledgeService"].full_name],
        register=lambda server: pb_grpc.add_KnowledgeServiceServicer_to_server(KnowledgeServicer(store), server),
        host="127.0.0.1",
        port=0,
        grace_s=1,
        logger=logging.getLogger("tiermesh.knowledge.test"),
    )
    await service.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    yield pb_grpc.KnowledgeServiceStub(channel)
    await channel.close()
    await service.shutdown("tests done")
