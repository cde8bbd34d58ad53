"""The load generator every benchmark drives the gateways with.

A *chat* is one streamed answer, timed from the moment it was due to be sent to its first text
and to its end. Three kinds of client, each as a real caller of that gateway:

- `GrpcChat`: RouterService.Chat over gRPC (grpc.aio, one HTTP/2 connection), through Envoy;
- `GrpcWebChat`: the same RPC as gRPC-Web (what the browser sends), over HTTP/1.1 or HTTP/2;
- `OpenAIChat`: an OpenAI-style `/v1/chat/completions` with Server-Sent Events (the simulator
  itself, and LiteLLM's proxy).

Two ways to load them:

- `closed_loop`: `concurrency` clients, each sending its next chat when the last one ended, for
  a fixed time after a warm-up. Shows throughput and latency at a given concurrency.
- `open_loop`: chats started at a fixed rate whatever happens to the ones before, latency counted
  from when each was due (so a stalled gateway cannot hide its queue: no coordinated omission).
  Shows whether a rate is sustained.

Latencies go into HDR histograms (bench.stats.Histogram: nanosecond resolution, three significant
digits). CPU per chat is read from /proc for every process given, over the measured window only.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from bench.stats import Histogram

CHAT_PATH = "/tiermesh.router.v1.RouterService/Chat"
# A chat is given this long; one that takes longer is counted as an error.
CHAT_TIMEOUT_S = 60.0

Chat = Callable[[int], Awaitable[float]]  # chat number -> when (perf_counter) its first text came; raises on failure


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far, its ended threads included, from /proc/PID/stat. The
    kernel counts it exactly but reports it in clock ticks (10 ms), so windows are made long
    enough for a tick to be noise (a thread's own counter, schedstat, would lose threads that end)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    """One scenario's figures; CPU is milliseconds per chat, per process."""

    gateway: str
    scenario: str
    transport: str
    mode: str  # closed | open
    concurrency: int = 0
    offered_rate: float = 0.0
    chats: int = 0
    errors: int = 0
    seconds: float = 0.0
    throughput: float = 0.0
    first_token_ms: dict[str, float] = field(default_factory=dict)
    whole_ms: dict[str, float] = field(default_factory=dict)
    cpu_ms: dict[str, float] = field(default_factory=dict)
    error_sample: str = ""

    @property
    def cpu_total_ms(self) -> float:
        return round(sum(self.cpu_ms.values()), 3)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"cpu_total_ms": self.cpu_total_ms}


class _Window:
    """What one measured window saw: histograms, errors, CPU per process."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.first = Histogram()
        self.whole = Histogram()
        self.errors = 0
        self.error_sample = ""
        self.measuring = False
        self._cpu: dict[str, float] = {}
        self._started = 0.0
        self.seconds = 0.0

    async def one(self, chat: Chat, n: int, due: float) -> None:
        try:
            first_at = await asyncio.wait_for(chat(n), CHAT_TIMEOUT_S)
        except Exception as exc:  # any failure is an error of this chat, counted and sampled
            if self.measuring:
                self.errors += 1
                self.error_sample = self.error_sample or f"{type(exc).__name__}: {exc}"[:300]
            return
        if self.measuring:  # both from when the chat was due, however late it could be sent
            self.whole.record(time.perf_counter() - due)
            self.first.record(first_at - due)

    def start(self) -> None:
        self._cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._started = time.perf_counter()
        self.measuring = True

    def stop(self) -> None:
        self.measuring = False
        self.seconds = time.perf_counter() - self._started
        self._cpu = {name: cpu_seconds(pid) - self._cpu[name] for name, pid in self.pids.items()}

    def result(self, **labels: Any) -> Result:
        chats = self.whole.count
        return Result(
            **labels,
            chats=chats,
            errors=self.errors,
            seconds=round(self.seconds, 3),
            throughput=round(chats / self.seconds, 2) if self.seconds else 0.0,
            first_token_ms=self.first.summary(),
            whole_ms=self.whole.summary(),
            cpu_ms={name: round(s / chats * 1000, 3) for name, s in self._cpu.items()} if chats else {},
            error_sample=self.error_sample,
        )


async def closed_loop(
    chat: Chat,
    concurrency: int,
    seconds: float,
    pids: Mapping[str, int],
    warmup_s: float = 1.0,
    stagger_s: float = 0.0,
    **labels: Any,
) -> Result:
    """`concurrency` clients back to back for `warmup_s`, then `seconds` measured. Each client
    starts at a random point within `stagger_s` (inside the warm-up), so that long streams do not
    run in lockstep: real callers' tokens do not arrive together, and on a machine where waking a
    process is dear, streams in step would share wake-ups and flatter the CPU figures."""
    window = _Window(pids)
    numbers = iter(range(10**9))
    loop = asyncio.get_running_loop()
    end = loop.time() + warmup_s + seconds

    async def client() -> None:
        await asyncio.sleep(random.uniform(0, stagger_s))
        while loop.time() < end:
            n = next(numbers)
            await window.one(chat, n, time.perf_counter())

    async def clock() -> None:
        await asyncio.sleep(warmup_s)
        window.start()
        await asyncio.sleep(seconds)
        window.stop()

    await asyncio.gather(clock(), *(client() for _ in range(concurrency)))
    return window.result(mode="closed", concurrency=concurrency, **labels)


async def open_loop(
    chat: Chat,
    rate: float,
    seconds: float,
    pids: Mapping[str, int],
    warmup_s: float = 1.0,
    max_in_flight: int = 2000,
    **labels: Any,
) -> Result:
    """Chats due every 1/`rate` s for `warmup_s` + `seconds`; those due in the measured part count.
    Latency runs from when a chat was due. More than `max_in_flight` at once count as errors."""
    window = _Window(pids)
    tasks: set[asyncio.Task[None]] = set()
    interval = 1.0 / rate
    started = time.perf_counter()
    total = int((warmup_s + seconds) * rate)
    measured_from = int(warmup_s * rate)
    for n in range(total):
        due = started + n * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if n == measured_from:
            window.start()
        if len(tasks) >= max_in_flight:
            window.errors += window.measuring
            continue
        task = asyncio.create_task(window.one(chat, n, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    # The window closes when the last chat due in it has finished.
    if tasks:
        await asyncio.wait(tasks)
    window.stop()
    return window.result(mode="open", offered_rate=rate, **labels)


# --- clients ------------------------------------------------------------------------------------


def chat_request(n: int, bypass_cache: bool, text: str = "", salt: str = "") -> pb.ChatRequest:
    """A greeting (Knowledge is not asked), different each time unless `text` is given (`salt`
    keeps one scenario's greetings apart from another's, and so out of its answers' cache)."""
    content = text or f"hello there {salt}{n}"
    return pb.ChatRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=content)], bypass_cache=bypass_cache)


class GrpcChat:
    """RouterService.Chat over gRPC through Envoy, as any gRPC client calls it."""

    def __init__(self, target: str, token: str, bypass_cache: bool = True, text: str = "", salt: str = "") -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = pb_grpc.RouterServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.bypass_cache = bypass_cache
        self.text = text
        self.salt = salt

    async def __call__(self, n: int) -> float:
        first = 0.0
        request = chat_request(n, self.bypass_cache, self.text, self.salt)
        async for event in self.stub.Chat(request, metadata=self.metadata):
            if not first and event.HasField("delta"):
                first = time.perf_counter()
        if not first:
            raise RuntimeError("the answer had no text")
        return first

    async def close(self) -> None:
        await self.channel.close()


class GrpcWebChat:
    """The same RPC as gRPC-Web (binary), as the browser sends it, over HTTP/1.1 or HTTP/2."""

    def __init__(self, url: str, token: str, http2: bool = False, bypass_cache: bool = True) -> None:
        self.client = httpx.AsyncClient(
            base_url=url, http1=not http2, http2=http2, timeout=CHAT_TIMEOUT_S, limits=httpx.Limits(max_connections=512)
        )
        self.headers = {
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
            "accept": "application/grpc-web+proto",
            "authorization": f"Bearer {token}",
        }
        self.bypass_cache = bypass_cache

    async def __call__(self, n: int) -> float:
        payload = chat_request(n, self.bypass_cache).SerializeToString()
        body = b"\x00" + struct.pack(">I", len(payload)) + payload
        first = 0.0
        buffer = b""
        status = ""
        async with self.client.stream("POST", CHAT_PATH, content=body, headers=self.headers) as resp:
            status = resp.headers.get("grpc-status", "")
            async for chunk in resp.aiter_raw():
                buffer += chunk
                while len(buffer) >= 5:
                    size = struct.unpack(">I", buffer[1:5])[0]
                    if len(buffer) < 5 + size:
                        break
                    flag, message, buffer = buffer[0], buffer[5 : 5 + size], buffer[5 + size :]
                    if flag & 0x80:
                        for line in message.decode("latin-1").split("\r\n"):
                            if line.lower().startswith("grpc-status:"):
                                status = line.split(":", 1)[1].strip()
                    elif not first and pb.ChatResponse.FromString(message).HasField("delta"):
                        first = time.perf_counter()
        if status != "0" or not first:
            raise RuntimeError(f"grpc-web answer ended with grpc-status {status or 'missing'}")
        return first

    async def close(self) -> None:
        await self.client.aclose()


class OpenAIChat:
    """`POST /v1/chat/completions` with `stream: true`, read as Server-Sent Events."""

    def __init__(self, url: str, model: str, api_key: str = "", text: str = "hello there") -> None:
        self.client = httpx.AsyncClient(
            base_url=url,
            timeout=CHAT_TIMEOUT_S,
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=512),
        )
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.model = model
        self.text = text

    async def __call__(self, n: int) -> float:
        body = {"model": self.model, "stream": True, "messages": [{"role": "user", "content": f"{self.text} {n}"}]}
        first = 0.0
        done = False
        async with self.client.stream("POST", "/v1/chat/completions", json=body, headers=self.headers) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif not first and line.startswith("data: {"):
                    choices = json.loads(line[6:]).get("choices") or [{}]
                    if (choices[0].get("delta") or {}).get("content"):  # text, not the role chunk
                        first = time.perf_counter()
        if not (first and done):
            raise RuntimeError("the stream ended without text or without [DONE]")
        return first

    async def close(self) -> None:
        await self.client.aclose()
