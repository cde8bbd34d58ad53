"""Clients that speak the edge's protocols byte by byte, as an attacker's tools do: gRPC over raw
HTTP/2 (so the trailers themselves can be read), and gRPC-Web over HTTP/1.1 and HTTP/2."""

from __future__ import annotations

import asyncio
import base64
import struct
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import httpx

from tests.integration.mesh import parse_trailers


def frame(payload: bytes, flag: int = 0) -> bytes:
    return bytes([flag]) + struct.pack(">I", len(payload)) + payload


def messages_of(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """The message payloads and the trailers frame (gRPC-Web) of a response body."""
    out: list[bytes] = []
    trailers: dict[str, str] = {}
    while len(body) >= 5:
        flag, size = body[0], struct.unpack(">I", body[1:5])[0]
        chunk, body = body[5 : 5 + size], body[5 + size :]
        if flag & 0x80:
            trailers = parse_trailers(chunk)
        else:
            out.append(chunk)
    return out, trailers


@dataclass
class Reply:
    """What came back: HTTP status and headers, the messages, and the gRPC status (from the trailers,
    or the headers of a trailers-only answer); `reset` when the stream was reset instead."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    messages: list[bytes] = field(default_factory=list)
    trailers: dict[str, str] = field(default_factory=dict)
    reset: int | None = None
    closed_early: bool = False
    body: bytes = b""

    @property
    def grpc_status(self) -> str:
        return self.trailers.get("grpc-status") or self.headers.get("grpc-status", "")

    @property
    def grpc_message(self) -> str:
        return self.trailers.get("grpc-message") or self.headers.get("grpc-message", "")


async def grpc_h2(
    host: str, port: int, path: str, body: bytes, headers: list[tuple[str, str]], timeout: float = 30
) -> Reply:
    """One gRPC call over cleartext HTTP/2, read to the end of its stream."""
    reader, writer = await asyncio.open_connection(host, port)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(
        sid,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", f"{host}:{port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *headers,
        ],
    )
    conn.send_data(sid, body, end_stream=True)
    writer.write(conn.data_to_send())
    reply = Reply()
    data = b""
    try:
        async with asyncio.timeout(timeout):
            done = False
            while not done:
                chunk = await reader.read(65536)
                if not chunk:
                    reply.closed_early = True
                    break
                for event in conn.receive_data(chunk):
                    if isinstance(event, h2.events.ResponseReceived):
                        reply.headers = dict(event.headers)
                        reply.status = int(reply.headers.get(":status", "0"))
                    elif isinstance(event, h2.events.DataReceived):
                        data += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.TrailersReceived):
                        reply.trailers = dict(event.headers)
                    elif isinstance(event, h2.events.StreamReset):
                        reply.reset = event.error_code
                        done = True
                    elif isinstance(event, h2.events.StreamEnded | h2.events.ConnectionTerminated):
                        done = True
                writer.write(conn.data_to_send())
    finally:
        writer.close()
    reply.messages, _ = messages_of(data)
    return reply


async def grpc_web(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    http2: bool = False,
    text: bool = False,
    timeout: float = 30,
) -> Reply:
    """One gRPC-Web call (binary or text) over HTTP/1.1 or HTTP/2 (cleartext), read to the end."""
    sent = dict(headers)
    sent.setdefault("content-type", "application/grpc-web-text" if text else "application/grpc-web+proto")
    sent.setdefault("x-grpc-web", "1")
    if text:
        sent.setdefault("accept", "application/grpc-web-text")
        body = base64.b64encode(body)
    async with httpx.AsyncClient(http1=not http2, http2=http2, timeout=timeout) as client:
        try:
            resp = await client.post(url, content=body, headers=sent)
        except (httpx.RemoteProtocolError, httpx.TimeoutException):  # cut, or the caller hung up
            return Reply(closed_early=True)
    raw = resp.content
    if not resp.headers.get("content-type", "").startswith("application/grpc"):
        return Reply(status=resp.status_code, headers={k.lower(): v for k, v in resp.headers.items()}, body=raw)
    if text and raw:
        pieces, start = [], 0
        for i in range(len(raw)):  # one or more base64 pieces, each maybe padded
            if raw[i : i + 1] == b"=" and (i + 1 == len(raw) or raw[i + 1 : i + 2] != b"="):
                pieces.append(raw[start : i + 1])
                start = i + 1
        pieces.append(raw[start:])
        raw = b"".join(base64.b64decode(p + b"=" * (-len(p) % 4)) for p in pieces if p.strip(b"="))
    reply = Reply(status=resp.status_code, headers={k.lower(): v for k, v in resp.headers.items()})
    reply.messages, reply.trailers = messages_of(raw)
    return reply
