#!/usr/bin/env python3
"""A local stand-in for the OpenAI Responses API, for timing Codex CLI through the proxy.

`POST .../responses` gets a short Server-Sent Events stream that ends the turn the way the
real API does (response.created, one assistant message streamed as output_text deltas,
response.completed with usage); `GET .../models` a one-model list; anything else 404. An
`Upgrade` request (it only arrives when nothing in between refuses it) gets the status of
`--upgrade-status`, 426 by default: how Codex falls back from a refusal, without the proxy.

Prints `listening <port>` on stdout once bound, then one line per request on stdout:
`request <METHOD> <path> upgrade=<Upgrade field or ->`. Standard library only.

Usage: fake_responses.py [--port N] [--text TEXT] [--upgrade-status N]
"""

import argparse
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "fake-model"


def sse_events(text, model):
    """The event sequence of one streamed response holding one assistant message."""
    now = int(time.time())
    resp_id, item_id = "resp_fake_1", "msg_fake_1"
    base = {"id": resp_id, "object": "response", "created_at": now, "model": model}
    part = {"type": "output_text", "text": text, "annotations": []}
    done_item = {"id": item_id, "type": "message", "role": "assistant",
                 "status": "completed", "content": [part]}
    usage = {"input_tokens": 42, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": 49}
    yield {"type": "response.created",
           "response": dict(base, status="in_progress", output=[])}
    yield {"type": "response.output_item.added", "output_index": 0,
           "item": dict(done_item, status="in_progress", content=[])}
    yield {"type": "response.content_part.added", "item_id": item_id,
           "output_index": 0, "content_index": 0,
           "part": {"type": "output_text", "text": "", "annotations": []}}
    words = text.split(" ")
    for i, word in enumerate(words):
        delta = word if i == len(words) - 1 else word + " "
        yield {"type": "response.output_text.delta", "item_id": item_id,
               "output_index": 0, "content_index": 0, "delta": delta}
    yield {"type": "response.output_text.done", "item_id": item_id,
           "output_index": 0, "content_index": 0, "text": text}
    yield {"type": "response.content_part.done", "item_id": item_id,
           "output_index": 0, "content_index": 0, "part": part}
    yield {"type": "response.output_item.done", "output_index": 0, "item": done_item}
    yield {"type": "response.completed",
           "response": dict(base, status="completed", output=[done_item], usage=usage)}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    text = "fake upstream says hello"
    upgrade_status = 426

    def log_message(self, format, *args):
        pass

    def note(self):
        upgrade = self.headers.get("Upgrade") or "-"
        print(f"request {self.command} {self.path} upgrade={upgrade}", flush=True)

    def drain(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)

    def answer(self, status, ctype, body, close=False):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def refuse_upgrade(self):
        body = b'{"error":{"message":"upgrade not supported here"}}'
        self.answer(self.upgrade_status, "application/json", body, close=True)

    def do_GET(self):
        self.note()
        if self.headers.get("Upgrade"):
            return self.refuse_upgrade()
        path = self.path.split("?", 1)[0]
        if path.endswith("/models"):
            body = json.dumps({"object": "list", "data": [
                {"id": MODEL, "object": "model", "created": 0, "owned_by": "fake"}]})
            return self.answer(200, "application/json", body.encode())
        self.answer(404, "application/json", b'{"error":{"message":"not found"}}')

    def do_POST(self):
        self.note()
        self.drain()
        path = self.path.split("?", 1)[0]
        if not path.endswith("/responses"):
            return self.answer(404, "application/json", b'{"error":{"message":"not found"}}')
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in sse_events(self.text, MODEL):
            chunk = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--text", default=Handler.text)
    parser.add_argument("--upgrade-status", type=int, default=Handler.upgrade_status)
    args = parser.parse_args()
    Handler.text = args.text
    Handler.upgrade_status = args.upgrade_status
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"listening {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
