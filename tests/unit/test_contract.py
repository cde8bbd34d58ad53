"""Services are registered from their contracts: an RPC the servicer lacks stops the service at
start, naming it, instead of answering UNIMPLEMENTED; the Router's raw relay is held to the
field numbers it relies on."""

from __future__ import annotations

from typing import Any

import pytest
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.inference.v1 import inference_service_pb2 as ipb
from tiermesh.knowledge.v1 import knowledge_service_pb2 as kpb
from tiermesh.knowledge.v1 import knowledge_service_pb2_grpc as kpb_grpc
from tiermesh.router.v1 import router_service_pb2 as pb

from services.router import servicer as router_servicer
from services.runtime import contract

KNOWLEDGE = kpb.DESCRIPTOR.services_by_name["KnowledgeService"]


class HalfKnowledge(kpb_grpc.KnowledgeServiceServicer):
    """Defines Search only: the generated base class answers the rest UNIMPLEMENTED."""

    async def Search(self, request: Any, context: Any) -> kpb.SearchResponse:
        return kpb.SearchResponse()


class FullKnowledge(HalfKnowledge):
    async def UpsertDocuments(self, request: Any, context: Any) -> kpb.UpsertDocumentsResponse:
        return kpb.UpsertDocumentsResponse()

    async def DeleteDocuments(self, request: Any, context: Any) -> kpb.DeleteDocumentsResponse:
        return kpb.DeleteDocumentsResponse()

    async def Embed(self, request: Any, context: Any) -> kpb.EmbedResponse:
        return kpb.EmbedResponse()


def test_a_servicer_missing_an_rpc_is_refused_naming_it() -> None:
    with pytest.raises(TypeError) as info:
        contract.served(KNOWLEDGE, HalfKnowledge())
    message = str(info.value)
    assert "UpsertDocuments" in message and "DeleteDocuments" in message and "Search" not in message.split(":")[0]
    assert "tiermesh.knowledge.v1.KnowledgeService" in message


def test_every_rpc_of_the_contract_gets_a_handler() -> None:
    served = contract.served(KNOWLEDGE, FullKnowledge())
    for method in KNOWLEDGE.methods:
        details = type("Details", (), {"method": served.path(method.name), "invocation_metadata": ()})()
        assert served.handler.service(details) is not None, method.name  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        served.path("Serch")


def test_relayed_events_decode_as_the_same_chat_events() -> None:
    """What Inference sends is what the client reads: the raw bytes of a delta or restart event
    are a ChatResponse with the same event."""
    delta = ipb.GenerateResponse(delta=c.TextDelta(text="olá 👋"))
    restart = ipb.GenerateResponse(restart=c.StreamRestart(reason="fallback"))
    relayed_events = ((delta, "delta", router_servicer._DELTA_TAG), (restart, "restart", router_servicer._RESTART_TAG))
    for event, field, tag in relayed_events:
        raw = event.SerializeToString()
        assert raw[0] == tag
        relayed = pb.ChatResponse.FromString(raw)
        assert relayed.WhichOneof("event") == field
        assert getattr(relayed, field) == getattr(event, field)
    assert ipb.GenerateResponse(done=ipb.GenerateDone(model="m")).SerializeToString()[0] == router_servicer._DONE_TAG


def test_a_field_that_does_not_match_across_the_two_contracts_cannot_be_relayed() -> None:
    # GenerateResponse.model_selected is number 1; ChatResponse has no such field.
    with pytest.raises(TypeError, match="model_selected"):
        router_servicer.relay_tag("model_selected")
