"""A local OTLP/HTTP receiver for benchmarks: `python -m bench.otlp_sink PORT_FILE`.

Accepts `POST /v1/traces` and `/v1/metrics` (protobuf, gzip or not), counts the spans it
decodes, answers 200 on a kept-alive connection, writes its port to PORT_FILE once listening, and prints the span count
when stopped (SIGTERM)."""

from __future__ import annotations

import gzip
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

_lock = threading.Lock()
_counts = {"spans": 0, "requests": 0}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep connections alive, as a collector does

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        spans = 0
        if self.path.endswith("/v1/traces"):
            request = ExportTraceServiceRequest.FromString(body)
            spans = sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)
        with _lock:
            _counts["spans"] += spans
            _counts["requests"] += 1
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    Path(sys.argv[1]).write_text(str(server.server_address[1]))
    server.serve_forever()
    print(f"spans {_counts['spans']} requests {_counts['requests']}", flush=True)


if __name__ == "__main__":
    main()
