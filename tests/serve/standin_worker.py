"""A stand-in deployment worker (stdlib only, starts in milliseconds) speaking the worker HTTP
contract, for supervisor and gateway tests that are about processes and routing, not the engine.

Run as ``python standin_worker.py --deployment ID --replica N --port P [--adapter NAME=VID]``.
Environment: ``STANDIN_FAIL=1`` exits at once with an error; ``STANDIN_DELAY`` sleeps before
listening. Chat messages steer it: ``please-429`` answers 429 with ``Retry-After: 7``,
``please-die`` streams two chunks and then kills the process, ``please-slow`` streams slowly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ADAPTERS: dict[str, str] = {}
STATE = {"requests": 0, "aborted": 0}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--deployment", required=True)
    p.add_argument("--replica", type=int, default=0)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--adapter", action="append", default=[])
    args = p.parse_args()
    if os.environ.get("STANDIN_FAIL"):
        print("standin: failing on purpose (STANDIN_FAIL)", flush=True)
        sys.exit(2)
    time.sleep(float(os.environ.get("STANDIN_DELAY", "0")))
    for a in args.adapter:
        name, _, vid = a.partition("=")
        ADAPTERS[name] = f"version:{vid}"
    replica = args.replica

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def _json(self, status: int, obj: object, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict:
            n = int(self.headers.get("content-length") or 0)
            return json.loads(self.rfile.read(n) or b"{}")

        def do_GET(self) -> None:
            if self.path == "/health":
                self._json(200, {"status": "ok"})
            elif self.path == "/stats":
                self._json(
                    200,
                    {"running": 0, "waiting": 0, "kv_usage": 0.25, "adapters": sorted(ADAPTERS), **STATE},
                )
            elif self.path == "/adapters":
                self._json(200, ADAPTERS)
            else:
                self._json(404, {"error": {"message": "no such path"}})

        def do_DELETE(self) -> None:
            name = self.path.rsplit("/", 1)[-1]
            found = ADAPTERS.pop(name, None)
            self._json(200 if found else 404, {"name": name})

        def do_POST(self) -> None:
            body = self._body()
            if self.path == "/internal/adapters":
                if "bad" in body["name"]:
                    self._json(400, {"error": {"message": "adapter does not fit"}})
                    return
                ADAPTERS[body["name"]] = body["path"]
                self._json(200, {"name": body["name"], "loaded": True})
                return
            STATE["requests"] += 1
            if self.path == "/v1/embeddings":
                self._json(
                    200,
                    {
                        "object": "list",
                        "model": body["model"],
                        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                        "usage": {"prompt_tokens": 2, "total_tokens": 2},
                    },
                )
                return
            text = json.dumps(body.get("messages") or body.get("prompt"))
            if "please-429" in text:
                self._json(
                    429,
                    {"error": {"message": "overloaded", "type": "rate_limit_error", "code": "overloaded"}},
                    {"Retry-After": "7"},
                )
                return
            words = ["hello", " from", f" replica {replica}", f" as {body['model']}"]
            usage = {"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)}
            chat = self.path == "/v1/chat/completions"
            if not body.get("stream"):
                choice = (
                    {"index": 0, "message": {"role": "assistant", "content": "".join(words)}}
                    if chat
                    else {"index": 0, "text": "".join(words)}
                )
                self._json(
                    200,
                    {
                        "id": "x",
                        "object": "chat.completion" if chat else "text_completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [{**choice, "finish_reason": "stop", "logprobs": None}],
                        "usage": usage,
                    },
                )
                return
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            try:
                for i, w in enumerate(words):
                    if "please-die" in text and i == 2:
                        os._exit(9)
                    delta = {"content": w} if chat else None
                    choice = {"index": 0, "delta": delta} if chat else {"index": 0, "text": w}
                    chunk = {
                        "id": "x",
                        "object": "chat.completion.chunk" if chat else "text_completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [{**choice, "finish_reason": None}],
                    }
                    self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
                    time.sleep(1.0 if "please-slow" in text else 0.01)
                end = {"index": 0, "finish_reason": "stop", **({"delta": {}} if chat else {"text": ""})}
                last = {"id": "x", "object": "x", "created": 0, "model": body["model"], "choices": [end]}
                if (body.get("stream_options") or {}).get("include_usage"):
                    last["usage"] = usage
                self._chunk(f"data: {json.dumps(last)}\n\n".encode())
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")
            except (BrokenPipeError, ConnectionResetError):
                STATE["aborted"] += 1

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"standin worker for {args.deployment} replica {replica} on {args.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    main()
