"""An upstream for trying the scenarios and for their tests: an HTTP/1.1 server on 127.0.0.1
that answers every request with its own name and the request headers it received, as JSON.

    python3 envoy/echo_upstream.py 8081 v1 &
    python3 envoy/echo_upstream.py 8082 v2 &

A request header `x-echo-response` (a JSON list of [name, value] pairs) sets the response's
`:status` and headers, so tests can make an upstream fail or send headers of its own.
`--fail-every N` answers every N-th request 500, a version that fails a share of its traffic."""

import argparse
import http.server
import json
import threading


class Upstream:
    """An HTTP/1.1 server on 127.0.0.1 that answers every request with its own name and the
    request headers it received, as JSON. A request header `x-echo-response` (a JSON list of
    [name, value] pairs) sets the response's status and headers. With `fail_every` N > 0,
    every N-th request it counts is answered 500 (unless that header sets a status)."""

    def __init__(self, name, port=0, fail_every=0):
        self.name = name
        self.count = 0
        self.fail_every = fail_every
        self._lock = threading.Lock()
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # One buffered write per response and no Nagle: otherwise headers and body go out
            # as two segments and each response waits out a delayed ACK (~40 ms).
            wbufsize = 1 << 16
            disable_nagle_algorithm = True

            def do_GET(self):
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                with upstream._lock:
                    upstream.count += 1
                    failing = upstream.fail_every > 0 and upstream.count % upstream.fail_every == 0
                pairs = [[k.lower(), v] for k, v in self.headers.items()]
                body = json.dumps({"upstream": upstream.name, "headers": pairs}).encode()
                respond = json.loads(self.headers.get("x-echo-response") or "[]")
                status = next((int(v) for k, v in respond if k == ":status"), 500 if failing else 200)
                self.send_response(status)
                for k, v in respond:
                    if not k.startswith(":"):
                        self.send_header(k, v)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        """Stops serving and closes the socket."""
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int, help="port on 127.0.0.1 (0: any free one)")
    parser.add_argument("name", help="the name it answers with, e.g. v1")
    parser.add_argument("--fail-every", type=int, default=0, metavar="N", help="answer every N-th request 500")
    args = parser.parse_args()
    upstream = Upstream(args.name, args.port, args.fail_every)
    print(f"upstream {args.name} on 127.0.0.1:{upstream.port}", flush=True)
    upstream.thread.join()
