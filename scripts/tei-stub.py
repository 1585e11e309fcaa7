#!/usr/bin/env python3
"""A TEI-compatible stand-in for development, demos and benchmarks.

Serves the shapes of Hugging Face text-embeddings-inference that context-api
uses: GET /health, GET /info, POST /embed. Vectors are a normalized bag of
words (texts that share words are close), deterministic, and of any dimension:
good enough to see search work end to end, not a language model.

    scripts/tei-stub.py --port 8080 --dim 768

Standard library only. The Rust test suite has its own in-process stub.
"""
import argparse
import hashlib
import json
import math
import re
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def embed(text, dim):
    v = [0.0] * dim
    for word in re.findall(r"\w+", text.lower()):
        h = hashlib.sha256(word.encode()).digest()
        v[int.from_bytes(h[0:8], "little") % dim] += 1.0
        v[int.from_bytes(h[8:16], "little") % dim] += 0.5
    if not any(v):
        v[0] = 1.0
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--model-id", default="stub/bag-of-words")
    ap.add_argument("--latency-ms", type=float, default=0.0,
                    help="sleep this long per /embed call, like a real model server (for benchmarks)")
    args = ap.parse_args()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self.reply(200, {})
            elif self.path == "/info":
                self.reply(200, {
                    "model_id": args.model_id,
                    "model_dtype": "float32",
                    "max_client_batch_size": args.max_batch,
                    "max_input_length": 512,
                    "version": "stub",
                })
            else:
                self.reply(404, {"error": "not found"})

        def do_POST(self):
            if self.path != "/embed":
                return self.reply(404, {"error": "not found"})
            length = int(self.headers.get("Content-Length", 0))
            try:
                inputs = json.loads(self.rfile.read(length))["inputs"]
            except (ValueError, KeyError, TypeError):
                return self.reply(422, {"error": "expected {\"inputs\": ...}", "error_type": "Validation"})
            if isinstance(inputs, str):
                inputs = [inputs]
            if len(inputs) > args.max_batch:
                return self.reply(413, {"error": f"batch size {len(inputs)} > maximum allowed batch size {args.max_batch}",
                                        "error_type": "Validation"})
            if args.latency_ms > 0:
                time.sleep(args.latency_ms / 1000)
            self.reply(200, [embed(t, args.dim) for t in inputs])

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"tei-stub: {args.model_id} dim={args.dim} on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
