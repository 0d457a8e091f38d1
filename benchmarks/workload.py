"""The light benchmark workload: one tiny TCP listener (stdlib only, started with ``python -I -S``).

    python -I -S workload.py PORT

Binds 0.0.0.0:PORT (ready = the port accepts), then accepts and closes connections for ever.
It stands for "a small process" in the bring-up benchmarks: its own start costs a few ms of CPU,
so the numbers measure the launcher, not the workload.
"""

import socket
import sys

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
while True:
    conn, _ = s.accept()
    conn.close()
