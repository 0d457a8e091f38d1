"""A stand-in for a GPU engine in supervision tests (stdlib only, runs on test-bed hosts).

    python standin.py --port 8001 [--bind ADDR] [--ready-after SECONDS] [--crash-after SECONDS]
                      [--exit-code N] [--argv-file PATH] [--term-log PATH [--term-delay SECONDS]]
                      [-- anything...]

Serves HTTP on the port: ``/health`` (and ``/live``) answers 200 once ready (503 before, or
after ``/unhealthy``); ``/crash?code=N`` exits with code N; ``/hang`` keeps
the process alive but stops answering; ``/pid`` returns the pid. With
``--argv-file`` it writes its own argv as JSON (for argv pass-through tests). With ``--term-log``
a SIGTERM appends ``<port> TERM <time>`` to that file, takes ``--term-delay`` seconds to shut
down (as an engine draining its requests would), appends ``<port> EXIT <time>`` and exits 0.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import sys
import threading
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--ready-after", type=float, default=0.0)
    parser.add_argument("--crash-after", type=float, default=None)
    parser.add_argument("--exit-code", type=int, default=1)
    parser.add_argument("--argv-file", default=None)
    parser.add_argument("--term-log", default=None)
    parser.add_argument("--term-delay", type=float, default=0.0)
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args()
    if args.argv_file:
        with open(args.argv_file, "w") as f:
            json.dump(sys.argv, f)
    started = time.monotonic()
    state = {"healthy": True, "hang": False}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:  # keep the log for our own lines
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if state["hang"]:
                time.sleep(3600)
            path, _, query = self.path.partition("?")
            if path in ("/health", "/live"):  # Dynamo 1.6.1's worker answers both alike
                ready = time.monotonic() - started >= args.ready_after and state["healthy"]
                self._reply(200 if ready else 503, "ok" if ready else "not ready")
            elif path == "/crash":
                code = int(query.split("=", 1)[1]) if query.startswith("code=") else args.exit_code
                self._reply(200, "bye")
                os._exit(code)
            elif path == "/hang":
                state["hang"] = True
                self._reply(200, "hanging")
            elif path == "/unhealthy":
                state["healthy"] = False
                self._reply(200, "unhealthy")
            elif path == "/pid":
                self._reply(200, str(os.getpid()))
            else:
                self._reply(404, "no")

        def _reply(self, code: int, body: str) -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer((args.bind, args.port), Handler)
    server.daemon_threads = True
    if args.crash_after is not None:
        threading.Timer(args.crash_after, lambda: os._exit(args.exit_code)).start()
    if args.term_log:
        def on_term(signum: int, frame: object) -> None:
            with open(args.term_log, "a") as f:
                f.write(f"{args.port} TERM {time.time():.6f}\n")
            time.sleep(args.term_delay)
            with open(args.term_log, "a") as f:
                f.write(f"{args.port} EXIT {time.time():.6f}\n")
            os._exit(0)

        signal.signal(signal.SIGTERM, on_term)
    print(f"standin pid={os.getpid()} port={args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
