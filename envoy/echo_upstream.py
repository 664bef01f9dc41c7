"""An upstream for trying the scenarios and for their tests: an HTTP/1.1 server on 127.0.0.1
that answers every request with its own name and the request headers it received, as JSON.

    python3 envoy/echo_upstream.py 8081 v1 &
    python3 envoy/echo_upstream.py 8082 v2 &

A request header `x-echo-response` (a JSON list of [name, value] pairs) sets the response's
`:status` and headers, so tests can make an upstream fail or send headers of its own.
`--fail-ratio R` answers a share R of requests 500, `--slow-ratio R --slow-ms MS` delays a
share R of responses by MS milliseconds: spread evenly over the requests it counts, not drawn
at random, so a test sees the same shares on every run."""

import argparse
import http.server
import json
import math
import threading
import time


class Upstream:
    """An HTTP/1.1 server on 127.0.0.1 that answers every request with its own name and the
    request headers it received, as JSON. A request header `x-echo-response` (a JSON list of
    [name, value] pairs) sets the response's status and headers. A share `fail_ratio` of
    requests is answered 500 (unless that header sets a status) and a share `slow_ratio` is
    delayed by `slow_ms`; both are attributes a test may change while it serves."""

    def __init__(self, name, port=0, fail_ratio=0.0, slow_ratio=0.0, slow_ms=0):
        self.name = name
        self.count = 0
        self.fail_ratio, self.slow_ratio, self.slow_ms = fail_ratio, slow_ratio, slow_ms
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
                    failing = _nth_of_share(upstream.count, upstream.fail_ratio)
                    slow = _nth_of_share(upstream.count, upstream.slow_ratio)
                if slow and upstream.slow_ms:
                    time.sleep(upstream.slow_ms / 1000)
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

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            # The default backlog (5) refuses connections when Envoy opens many at once on a
            # loaded machine, and Envoy then answers 503 for the version.
            request_queue_size = 1024

        self.server = Server(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        """Stops serving and closes the socket."""
        self.server.shutdown()
        self.server.server_close()


def _nth_of_share(n, ratio):
    """Whether the n-th request (from 1) is one of a share `ratio` spread evenly: the n-th
    is picked when floor(n * ratio) steps up, so any n consecutive requests hold
    floor(n * ratio) or one more of them."""
    # The epsilon keeps 40 * 0.025 at 1 despite binary fractions.
    return ratio > 0 and math.floor(n * ratio + 1e-9) > math.floor((n - 1) * ratio + 1e-9)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int, help="port on 127.0.0.1 (0: any free one)")
    parser.add_argument("name", help="the name it answers with, e.g. v1")
    parser.add_argument("--fail-ratio", type=float, default=0.0, metavar="R", help="answer a share R of requests 500")
    parser.add_argument("--slow-ratio", type=float, default=0.0, metavar="R", help="delay a share R of responses")
    parser.add_argument("--slow-ms", type=int, default=0, metavar="MS", help="by this many milliseconds")
    args = parser.parse_args()
    upstream = Upstream(args.name, args.port, args.fail_ratio, args.slow_ratio, args.slow_ms)
    print(f"upstream {args.name} on 127.0.0.1:{upstream.port}", flush=True)
    upstream.thread.join()
