"""What one gRPC stream can carry here when the server does no work at all.

The speed targets of issues 4 (BatchVerify, 20,000 verifications/s on one stream) and 6
(ImportCitizens, 50,000 records/s on one stream) are per-message rates. This benchmark measures
the ceiling the transport itself sets on this machine: a grpc.aio server on uvloop (as the
registry serves) whose handlers neither deserialise nor look at the messages, fed over one
stream by the same kind of Python client the other benchmarks use.

- sink: a client stream of ImportCitizens-sized messages, one answer at the end (the shape of
  ImportCitizens);
- echo: a bidirectional stream answering every message with one message (the shape of
  BatchVerify), requests and answers flowing at once.

Whatever the registry does per message comes on top of these figures. The Python client
costs as much per message as the server, so with NODE_PATH naming a node_modules that holds
@grpc/grpc-js (and `node` on the PATH) the same streams are also driven by
bench/transport_client.js, which shows the server side's own ceiling.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc

from bench.common import free_port

MESSAGES = 100_000
IMPORT_TARGET_PER_S = 50_000
BATCH_VERIFY_TARGET_PER_S = 20_000
_MESSAGE = os.urandom(180)  # about an ImportCitizensRequest / VerifyIdentityRequest

_SERVER = r"""
import asyncio, sys
import grpc, uvloop

async def sink(requests, context):
    n = 0
    async for _ in requests:
        n += 1
    return n.to_bytes(8, "big")

async def echo(requests, context):
    async for request in requests:
        yield request

async def main(port):
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Transport", {
        "Sink": grpc.stream_unary_rpc_method_handler(sink),
        "Echo": grpc.stream_stream_rpc_method_handler(echo),
    }),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()

uvloop.install()
asyncio.run(main(int(sys.argv[1])))
"""


def _sink(channel: grpc.Channel) -> float:
    call = channel.stream_unary("/bench.Transport/Sink")
    started = time.perf_counter()
    received = int.from_bytes(call((_MESSAGE for _ in range(MESSAGES)), timeout=600), "big")
    elapsed = time.perf_counter() - started
    assert received == MESSAGES, received
    return MESSAGES / elapsed


def _echo(channel: grpc.Channel) -> float:
    call = channel.stream_stream("/bench.Transport/Echo")
    started = time.perf_counter()
    answers = sum(1 for _ in call((_MESSAGE for _ in range(MESSAGES)), timeout=600))
    elapsed = time.perf_counter() - started
    assert answers == MESSAGES, answers
    return MESSAGES / elapsed


def _node(target: str, mode: str) -> float | None:
    """The rate with the Node.js grpc-js client, when node and @grpc/grpc-js are at hand."""
    if shutil.which("node") is None or not os.environ.get("NODE_PATH"):
        return None
    script = Path(__file__).with_name("transport_client.js")
    done = subprocess.run(
        ["node", str(script), target, mode, str(MESSAGES)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        print(f"  (node client failed: {done.stderr.strip()[:200]})")
        return None
    return float(json.loads(done.stdout)["rate"])


def _line(client: str, sink: float, echo: float) -> str:
    return (
        f"transport ceiling (no work per message, one stream, {client} client): client stream "
        f"{sink:,.0f} msgs/s (ImportCitizens target {IMPORT_TARGET_PER_S:,}/s -> "
        f"{sink / IMPORT_TARGET_PER_S:.2f}x); bidirectional echo {echo:,.0f} msgs/s "
        f"(BatchVerify target {BATCH_VERIFY_TARGET_PER_S:,}/s -> "
        f"{echo / BATCH_VERIFY_TARGET_PER_S:.2f}x)"
    )


def main() -> dict[str, float]:
    port = free_port()
    target = f"127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        with grpc.insecure_channel(target) as channel:
            sink = _sink(channel)
            echo = _echo(channel)
        node_sink, node_echo = _node(target, "sink"), _node(target, "echo")
    finally:
        server.terminate()
        server.wait(30)
    print(_line("Python", sink, echo))
    figures = {"sink_per_s": sink, "echo_per_s": echo}
    if node_sink is not None and node_echo is not None:
        print(_line("Node.js grpc-js", node_sink, node_echo))
        figures |= {"node_sink_per_s": node_sink, "node_echo_per_s": node_echo}
    return figures


if __name__ == "__main__":
    main()
