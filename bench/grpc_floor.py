"""The floor under every hop: what Python's gRPC (grpc.aio on uvloop, as the services run it) costs
per call and per streamed message, with nothing of tiermesh in it. A bare server in its own
process answers an empty unary call, and a server stream of 32 small messages; the CPU of the
client and of the server is read per call and per message. A tiermesh hop is at least one call
(both ends) plus its messages, so these figures bound from below what the mesh can reach.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import grpc

from bench.load import cpu_seconds
from services.cli.mesh import free_port

CALLS = 2000
STREAMS = 200
MESSAGES = 32
PAYLOAD = b"x" * 24  # about one merged text delta

SERVER = """
import asyncio, sys, grpc, uvloop

async def unary(request, context):
    return request

async def stream(request, context):
    count, _, pause_ms = request.decode().partition(":")
    for _ in range(int(count)):
        if pause_ms:
            await asyncio.sleep(int(pause_ms) / 1000)
        await context.write(b"x" * 24)

async def main(port):
    server = grpc.aio.server()
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("floor.Floor", handlers)])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()

uvloop.run(main(int(sys.argv[1])))
"""


async def measure(port: int, server_pid: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        unary = channel.unary_unary("/floor.Floor/Unary")
        stream = channel.unary_stream("/floor.Floor/Stream")
        for _ in range(200):
            await unary(PAYLOAD)
        own, theirs = time.process_time(), cpu_seconds(server_pid)
        for _ in range(CALLS):
            await unary(PAYLOAD)
        client_call = (time.process_time() - own) / CALLS * 1000
        server_call = (cpu_seconds(server_pid) - theirs) / CALLS * 1000
        count = f"{MESSAGES}:".encode()
        own, theirs = time.process_time(), cpu_seconds(server_pid)
        for _ in range(STREAMS):
            async for _ in stream(count):
                pass
        client_stream = (time.process_time() - own) / STREAMS * 1000
        server_stream = (cpu_seconds(server_pid) - theirs) / STREAMS * 1000
        # Paced: 16 streams at once, a message every 50 ms on each, as merged text leaves Inference.
        paced = f"{MESSAGES}:50".encode()

        async def one() -> None:
            async for _ in stream(paced):
                pass

        own, theirs = time.process_time(), cpu_seconds(server_pid)
        await asyncio.gather(*(one() for _ in range(16)))
        client_paced = (time.process_time() - own) / 16 * 1000
        server_paced = (cpu_seconds(server_pid) - theirs) / 16 * 1000
    per_message = (client_stream + server_stream - client_call - server_call) / MESSAGES
    per_paced = (client_paced + server_paced - client_call - server_call) / MESSAGES
    print(
        f"grpc.aio floor (plain TCP, uvloop): an empty unary call costs {client_call:.3f} ms of client CPU"
        f" + {server_call:.3f} ms of server CPU; each streamed message adds {per_message:.3f} ms (both ends)"
        f" back to back, {per_paced:.3f} ms one every 50 ms (16 streams at once)"
    )


def main() -> None:
    import uvloop

    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE, env=os.environ)
    try:
        assert server.stdout is not None
        server.stdout.readline()
        uvloop.run(measure(port, server.pid))
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
