"""The servers a differential scenario (testdata/differential/, issue 16) needs behind a real
Envoy: an HTTP/1.1 server that records every request and answers each with one fixed response
(the route's upstream, and the clusters that answer), and one that accepts connections and never
answers (a `hang` cluster). All bind 127.0.0.1 on a free port and are stopped by `close()`."""

import contextlib
import http.server
import socket
import threading


class Answering:
    """An HTTP/1.1 server answering every request with `status`, exactly `headers` (a list of
    [name, value] pairs, plus content-length when they have none) and `body`; `requests` holds
    what each request carried: method, path, headers as received, body as text."""

    def __init__(self, status=200, headers=(), body=""):
        self.requests = []
        self._lock = threading.Lock()
        answer = body.encode()
        pairs = [(k, v) for k, v in headers]
        if not any(k.lower() == "content-length" for k, _ in pairs):
            pairs.append(("content-length", str(len(answer))))
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 1 << 16
            disable_nagle_algorithm = True

            def handle_one_request(self):
                # Any method: BaseHTTPRequestHandler dispatches on do_<METHOD>, which a
                # scenario's method need not have.
                self.raw_requestline = self.rfile.readline(65537)
                if not self.raw_requestline or not self.parse_request():
                    self.close_connection = True
                    return
                length = int(self.headers.get("content-length") or 0)
                data = self.rfile.read(length) if length else b""
                with server._lock:
                    server.requests.append({
                        "method": self.command,
                        "path": self.path,
                        "headers": [[k, v] for k, v in self.headers.items()],
                        "body": data.decode(errors="replace"),
                    })
                # send_response_only: no Server or Date of Python's own, the answer is exact.
                self.send_response_only(status)
                for k, v in pairs:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(answer)
                self.wfile.flush()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        """Stops serving and closes the socket."""
        self.server.shutdown()
        self.server.server_close()


class Hanging:
    """A TCP server that accepts every connection and never answers: the caller's own timeout
    decides. The connections are held open until `close()`."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held = []
        self._closed = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self._closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self):
        """Stops accepting and closes every held connection."""
        self._closed.set()
        with contextlib.suppress(OSError):
            # Wakes the accept() above: closing alone does not on Linux.
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for conn in self.held:
            conn.close()
