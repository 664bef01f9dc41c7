"""A config source for the live scenario and its tests: serves one JSON document at any path
with a strong ETag and answers `If-None-Match` with 304, as object stores and static file
servers do. `PUT` replaces the document.

    python3 envoy/config_server.py 8090 examples/checkout.json &
    curl -X PUT --data-binary @my-rollout.json localhost:8090/rollout.json

Tests also make it fail (`fail_with`), slow (`delay`), or go away (`stop`, then `start`)."""

import argparse
import hashlib
import http.server
import pathlib
import threading
import time


class ConfigServer:
    """One JSON document at every path, with a strong ETag; `PUT` replaces it. The attributes
    `fail_with`, `delay` and `garbage` make it misbehave; `requests` and `not_modified` count."""

    def __init__(self, body=b"{}", port=0):
        self.lock = threading.Lock()
        self.fail_with = None  # a status code to answer instead, e.g. 503
        self.delay = 0.0  # seconds to wait before answering
        self.garbage = False  # answer 200 with a body that is not JSON
        self.requests = 0
        self.not_modified = 0
        self.set(body)
        self.port = port
        self.server = None
        self.start()

    def set(self, body):
        """Replaces the document (bytes) and its ETag."""
        with self.lock:
            self.body = body
            self.etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            self.changed_at = time.monotonic()

    def start(self):
        """Serves on `self.port` (a free one the first time, if 0) in a background thread."""
        source = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 1 << 16
            disable_nagle_algorithm = True

            def answer(self, status, body=b"", etag=None):
                self.send_response(status)
                if etag:
                    self.send_header("etag", etag)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                with source.lock:
                    source.requests += 1
                    body, etag = source.body, source.etag
                    fail_with, delay, garbage = source.fail_with, source.delay, source.garbage
                if delay:
                    time.sleep(delay)
                if fail_with:
                    self.answer(fail_with, b"unavailable")
                elif garbage:
                    self.answer(200, b"<html>oops</html>", '"garbage"')
                elif self.headers.get("if-none-match") == etag:
                    with source.lock:
                        source.not_modified += 1
                    self.answer(304, etag=etag)
                else:
                    self.answer(200, body, etag)

            def do_PUT(self):
                length = int(self.headers.get("content-length") or 0)
                source.set(self.rfile.read(length))
                self.answer(204)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        """Stops serving and closes the socket; `start` serves again on the same port."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int, help="port on 127.0.0.1 (0: any free one)")
    parser.add_argument("file", type=pathlib.Path, nargs="?", help="the first document (default: {})")
    args = parser.parse_args()
    server = ConfigServer(args.file.read_bytes() if args.file else b"{}", args.port)
    print(f"config source on 127.0.0.1:{server.port}", flush=True)
    server.thread.join()
