"""The OPC UA benchmark's server: N Double variables that all change every `--period-s`.

Runs in its own process, so that its CPU is not counted against the client under test.
Prints one JSON line `{"event": "listening", "endpoint": ..., "nodes": [...]}` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket

from asyncua import ua
from asyncua.server.server import Server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def serve(items: int, period_s: float) -> None:
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/bench/"
    server = Server()
    await server.init()
    server.set_endpoint(endpoint)
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("urn:edge-agent:bench")
    folder = await server.nodes.objects.add_folder(ua.NodeId(ua.String("bench"), ua.Int16(ns)),
                                                   ua.QualifiedName("bench", ns))
    nodes = []
    for i in range(items):
        node_id = ua.NodeId(ua.String(f"bench.v{i}"), ua.Int16(ns))
        await folder.add_variable(node_id, ua.QualifiedName(f"v{i}", ns), 0.0)
        nodes.append(node_id)
    await server.start()
    print(json.dumps({"event": "listening", "endpoint": endpoint,
                      "nodes": [n.to_string() for n in nodes]}), flush=True)
    tick = 0
    while True:
        tick += 1
        for i, node_id in enumerate(nodes):
            await server.write_attribute_value(
                node_id, ua.DataValue(ua.Variant(float(tick + i), ua.VariantType.Double)))
        await asyncio.sleep(period_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--period-s", type=float, default=0.2)
    args = parser.parse_args()
    asyncio.run(serve(args.items, args.period_s))


if __name__ == "__main__":
    main()
