"""A config source for the live scenario and its tests: serves one JSON document at any path
with a strong ETag and answers `If-None-Match` with 304, as object stores and static file
servers do. `PUT` replaces the document.

It also long-polls: a conditional GET with `Prefer: wait=N` (RFC 7240) whose ETag is current
is held until a `PUT` changes the document (then 200 at once) or N seconds pass (then 304),
answered with `Preference-Applied: wait=N`. `--no-wait` makes it ignore `Prefer`, as a static
file server does.

    python3 envoy/config_server.py 8090 examples/checkout.json &
    curl -X PUT --data-binary @my-rollout.json localhost:8090/rollout.json

Tests also make it fail (`fail_with`), slow (`delay`), or go away (`stop`, then `start`)."""

import argparse
import hashlib
import http.server
import pathlib
import re
import sys
import threading
import time

# The longest hold the server grants, whatever a client asks: a bound on held threads' lives.
MAX_WAIT_S = 300


class ConfigServer:
    """One JSON document at every path, with a strong ETag; `PUT` replaces it. The attributes
    `fail_with`, `delay` and `garbage` make it misbehave, `honour_wait` (False: ignore `Prefer`,
    like a static file server) turns long-polling off; `requests`, `not_modified`, `asked_to_wait`
    (GETs with `Prefer: wait`, honoured or not) and `held` (polls answered after a hold) count."""

    def __init__(self, body=b"{}", port=0, honour_wait=True):
        self.lock = threading.Lock()
        # Woken by `set` (the document changed) and by `stop` (held polls must end).
        self.changed = threading.Condition(self.lock)
        self.honour_wait = honour_wait
        self.held = 0
        self.asked_to_wait = 0
        self.serving = 0  # bumped by `stop`: a poll held across it is dropped, not answered
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
            self.changed.notify_all()

    def start(self):
        """Serves on `self.port` (a free one the first time, if 0) in a background thread."""
        source = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 1 << 16
            disable_nagle_algorithm = True

            def answer(self, status, body=b"", etag=None, waited=None):
                self.send_response(status)
                if etag:
                    self.send_header("etag", etag)
                if waited is not None:
                    self.send_header("preference-applied", f"wait={waited}")
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                wait = requested_wait(self.headers.get("prefer"))
                sent_etag = self.headers.get("if-none-match")
                with source.lock:
                    source.requests += 1
                    source.asked_to_wait += wait is not None
                    if not source.honour_wait:
                        wait = None
                    if wait is not None and sent_etag is not None:
                        serving = source.serving
                        source.changed.wait_for(lambda: source.etag != sent_etag or source.serving != serving,
                                                timeout=wait)
                        if source.serving != serving:
                            self.close_connection = True  # stopped meanwhile: as if it went down
                            return
                        source.held += 1
                    else:
                        wait = None  # nothing to wait for without an ETag: answered at once
                    body, etag = source.body, source.etag
                    fail_with, delay, garbage = source.fail_with, source.delay, source.garbage
                if delay:
                    time.sleep(delay)
                if fail_with:
                    self.answer(fail_with, b"unavailable")
                elif garbage:
                    self.answer(200, b"<html>oops</html>", '"garbage"')
                elif sent_etag == etag:
                    with source.lock:
                        source.not_modified += 1
                    self.answer(304, etag=etag, waited=wait)
                else:
                    self.answer(200, body, etag, waited=wait)

            def do_PUT(self):
                length = int(self.headers.get("content-length") or 0)
                source.set(self.rfile.read(length))
                self.answer(204)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            # The default backlog (5) drops connections when a fleet reconnects at once.
            request_queue_size = 1024

            def handle_error(self, request, client_address):
                # A client that goes away (an Envoy stopped with a poll held) is no error.
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        """Stops serving and closes the socket, dropping held polls; `start` serves again on the
        same port."""
        with self.lock:
            self.serving += 1
            self.changed.notify_all()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def requested_wait(prefer):
    """The seconds a `Prefer` header's `wait` preference asks for (at most MAX_WAIT_S), or None."""
    m = re.search(r"(?:^|[,;\s])wait\s*=\s*\"?(\d+)", prefer or "", re.IGNORECASE)
    return min(int(m.group(1)), MAX_WAIT_S) if m else None


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int, help="port on 127.0.0.1 (0: any free one)")
    parser.add_argument("file", type=pathlib.Path, nargs="?", help="the first document (default: {})")
    parser.add_argument("--no-wait", action="store_true", help="ignore Prefer: wait, like a static file server")
    args = parser.parse_args()
    server = ConfigServer(args.file.read_bytes() if args.file else b"{}", args.port, honour_wait=not args.no_wait)
    print(f"config source on 127.0.0.1:{server.port}", flush=True)
    server.thread.join()
