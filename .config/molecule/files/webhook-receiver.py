"""A webhook receiver for molecule scenarios: every POST body is appended to a file as one line.

GET /metrics answers a small exposition, so that the same server can stand for a scraped service.
Usage: webhook-receiver.py PORT FILE
"""

import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

PORT, PATH = int(sys.argv[1]), sys.argv[2]
METRICS = b"# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n"


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(PATH, "ab") as f:
            f.write(body.replace(b"\n", b" ") + b"\n")
        self.send_response(200)
        self.end_headers()

    def do_GET(self):
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(METRICS if self.path == "/metrics" else b"")


HTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
