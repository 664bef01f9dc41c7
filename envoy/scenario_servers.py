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


class GrpcTrailersOnly:
    """A bare HTTP/2 (h2c, prior knowledge) server answering every stream, once its request has
    ended, with one HEADERS frame that ends the stream: `:status 200`, `content-type:
    application/grpc`, `grpc-status` and (when given) `grpc-message`, a gRPC trailers-only
    response. Just enough HTTP/2 for Envoy's gRPC client: SETTINGS and PING are acknowledged,
    everything else is read and ignored. Written here because the .venv has no HTTP/2 library."""

    PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

    def __init__(self, status, message=None):
        fields = [("content-type", "application/grpc"), ("grpc-status", str(status))]
        if message is not None:
            fields.append(("grpc-message", message))
        # 0x88: `:status: 200` from HPACK's static table; then literals without indexing.
        self.block = b"\x88" + b"".join(b"\x00" + _hpack_string(k) + _hpack_string(v) for k, v in fields)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with contextlib.suppress(OSError, ValueError):
            if _read_exactly(conn, len(self.PREFACE)) != self.PREFACE:
                return
            conn.sendall(_frame(0x4, 0, 0, b""))  # our SETTINGS: all defaults
            while True:
                header = _read_exactly(conn, 9)
                length = int.from_bytes(header[:3], "big")
                kind, flags = header[3], header[4]
                stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
                payload = _read_exactly(conn, length)
                if kind == 0x4 and not flags & 0x1:
                    conn.sendall(_frame(0x4, 0x1, 0, b""))  # SETTINGS ACK
                elif kind == 0x6 and not flags & 0x1:
                    conn.sendall(_frame(0x6, 0x1, 0, payload))  # PING ACK
                elif kind in (0x0, 0x1) and flags & 0x1:
                    # DATA or HEADERS ending the request: END_STREAM | END_HEADERS.
                    conn.sendall(_frame(0x1, 0x5, stream, self.block))
                elif kind == 0x7:
                    return

    def close(self):
        """Stops accepting and closes every connection."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for conn in self.conns:
            conn.close()


def _frame(kind, flags, stream, payload):
    """One HTTP/2 frame."""
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _hpack_string(text):
    """An HPACK string literal, not Huffman-coded: a 7-bit-prefix length, then the bytes."""
    data = text.encode()
    n = len(data)
    if n < 127:
        return bytes([n]) + data
    out, n = [127], n - 127
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    out.append(n)
    return bytes(out) + data


def _read_exactly(conn, n):
    """n bytes from a socket; ValueError if it closes first."""
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ValueError("connection closed")
        data += chunk
    return data
