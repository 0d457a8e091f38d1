"""The observer of ``benchmarks/ray_up.py``: when does Ray's GCS list N alive nodes?

    python benchmarks/ray_poll.py HEAD:PORT N TIMEOUT

Run inside the head host (``bed.nsenter_argv``), with the python of the Ray under test. It
imports Ray's GCS client first and prints ``{"event": "ready"}``, so the caller starts its clock
only once the observer costs nothing more. Then, every ~50 ms until the GCS port accepts TCP,
and every ~100 ms after that, it asks the GCS for its node table
(``GcsClient.get_all_node_info``, the table ``ray status`` and ``ray.nodes()`` read) and prints
one JSON line per event, with the wall time (``time.time()``; the bed's hosts share the
machine's clock):

- ``port``: the GCS port first accepted a connection;
- ``client``: the GCS client is connected (constructing one blocks up to 40 s while no GCS
  answers, which is why the port comes first);
- ``head``: the head's own address first showed an ALIVE node;
- ``node``: an address first showed an ALIVE node (``start_time_ms`` = Ray's own start time);
- ``all``: N distinct addresses alive at once; then it exits 0;
- ``timeout``: TIMEOUT seconds passed first (or its parent, the caller's ``nsenter``, is gone); exit 1.

Standard library and Ray only; every loop is bounded by TIMEOUT.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

POLL = 0.1  # between node-table reads
PORT_POLL = 0.05  # between TCP connects before the GCS listens
RPC_TIMEOUT = 2  # seconds one node-table read may take


def say(event: str, **fields) -> None:
    """One JSON line on stdout: the event, its wall time, and ``fields``."""
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


def port_open(host: str, port: int) -> bool:
    """Whether ``host:port`` accepts a TCP connection right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def alive_nodes(client) -> dict[str, int]:
    """``{address: start_time_ms}`` of the ALIVE nodes in the GCS node table."""
    out: dict[str, int] = {}
    for info in client.get_all_node_info(timeout=RPC_TIMEOUT).values():
        if info.state == 0:  # GcsNodeInfo.ALIVE
            out.setdefault(info.node_manager_address, info.start_time_ms)
    return out


def main(argv: list[str]) -> int:
    address, want, timeout = argv[0], int(argv[1]), float(argv[2])
    host, port = address.rsplit(":", 1)
    from ray._raylet import GcsClient  # ~0.6 s of imports, paid before the caller's clock starts

    parent = os.getppid()  # nsenter, outside this PID namespace; once it is gone, so are we
    say("ready")
    deadline = time.monotonic() + timeout
    while not port_open(host, int(port)):
        if time.monotonic() > deadline or os.getppid() != parent:
            say("timeout", stage="port")
            return 1
        time.sleep(PORT_POLL)
    say("port")
    client = GcsClient(address=address)
    say("client")
    seen: dict[str, int] = {}
    while time.monotonic() < deadline and os.getppid() == parent:
        try:
            nodes = alive_nodes(client)
        except Exception as e:  # noqa: BLE001  (a busy GCS times out a read: try again)
            say("error", error=str(e)[:200])
            nodes = {}
        for addr, started in sorted(nodes.items()):
            if addr not in seen:
                seen[addr] = started
                say("node", address=addr, start_time_ms=started)
                if addr == host:
                    say("head")
        if len(nodes) >= want:
            say("all", addresses=sorted(nodes))
            return 0
        time.sleep(POLL)
    say("timeout", stage="nodes", addresses=sorted(seen))
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
