"""container-check fixture, a recording upstream: answers every request 200
`upstream ok` (GET /health: 404), appends each request (method, target, header
list, body) as a JSON line to RECORD.

Usage: python3 upstream.py RECORD PORT_FILE [CERT KEY]

Listens on UPSTREAM_BIND (default 127.0.0.1; .ci/podman-check gives 0.0.0.0,
run in a container or reached from one) on UPSTREAM_PORT (default 0: a free port), whose number it writes to PORT_FILE
(by rename, so the file is complete once it exists); with CERT and KEY it
speaks TLS. Serves until killed.
"""
import json, os, ssl, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

record, port_file = sys.argv[1], sys.argv[2]
cert = sys.argv[3] if len(sys.argv) > 4 else None
key = sys.argv[4] if len(sys.argv) > 4 else None

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def handle_one(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        with open(record, "a") as f:
            f.write(json.dumps({"method": self.command, "target": self.path,
                                "headers": list(self.headers.items()),
                                "body": body.decode("latin-1")}) + "\n")
        if self.command == "GET" and self.path == "/health":
            code, out = 404, b"not the proxy"
        else:
            code, out = 200, b"upstream ok"
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)
    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = handle_one
    def log_message(self, *a):
        pass

srv = ThreadingHTTPServer((os.environ.get("UPSTREAM_BIND", "127.0.0.1"),
                           int(os.environ.get("UPSTREAM_PORT", "0"))), H)
srv.daemon_threads = True
if cert:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
with open(port_file + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
os.rename(port_file + ".tmp", port_file)
srv.serve_forever()
