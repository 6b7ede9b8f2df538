"""A local archive mirror for the fetch tests: ``http.server`` on 127.0.0.1 in a thread.

It serves files from memory with HTTP ``Range`` support (206 with ``Content-Range``, 416 past the
end), records every request (path and ``Range`` header), and can misbehave on purpose:
``truncate`` = ``"first"`` cuts the first answer after half its body and closes the connection,
``"always"`` cuts every answer so. Nothing reaches beyond the loopback interface.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Mirror:
    url: str
    files: dict[str, bytes]
    truncate: str = "never"
    """never | first | always"""
    requests: list[tuple[str, str | None]] = field(default_factory=list)


@contextmanager
def serve(files: dict[str, bytes]) -> Iterator[Mirror]:
    state = Mirror("", dict(files))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: a cut answer ends with the connection

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            asked = self.headers.get("Range")
            state.requests.append((name, asked))
            data = state.files.get(name)
            if data is None:
                self.send_error(404, "Not Found")
                return
            start = 0
            if asked:
                match = re.fullmatch(r"bytes=(\d+)-", asked)
                start = int(match[1]) if match else 0
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.truncate == "always" or (state.truncate == "first" and len(state.requests) == 1):
                body = body[: len(body) // 2]
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
