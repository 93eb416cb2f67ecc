"""A stand-in engine server for the process-supervisor tests (stdlib only).

``GET /health`` answers 503 until ``--ready-after-s`` has passed, then 200.
``--grandchild`` starts a sleeping child process first (as vLLM starts its
EngineCore) and prints its pid; ``--exit-after-s`` crashes the server with
``--exit-code``; ``--ignore-sigterm`` makes SIGTERM useless, so only SIGKILL works.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-after-s", type=float, default=0.0)
    parser.add_argument("--exit-after-s", type=float, default=None)
    parser.add_argument("--exit-code", type=int, default=3)
    parser.add_argument("--grandchild", action="store_true")
    parser.add_argument("--ignore-sigterm", action="store_true")
    args = parser.parse_args()

    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.grandchild:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        print(f"grandchild pid {child.pid}", flush=True)
    ready_at = time.monotonic() + args.ready_after_s

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ready = self.path == "/health" and time.monotonic() >= ready_at
            self.send_response(200 if ready else 503)
            self.end_headers()

        def log_message(self, format: str, *values: object) -> None:
            print(f"request {self.path}", file=sys.stderr, flush=True)

    if args.exit_after_s is not None:

        def crash() -> None:
            time.sleep(args.exit_after_s)
            print("boom: simulated crash", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(args.exit_code)

        threading.Thread(target=crash, daemon=True).start()

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"dummy engine listening on port {args.port}", flush=True)
    if not args.ignore_sigterm:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    except SystemExit:
        print("dummy engine stopping", flush=True)
        raise


if __name__ == "__main__":
    main()
