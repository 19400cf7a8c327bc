"""The calls agents and the CLI make to the running gateway carry the fleet token: never through a proxy."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from coordinator.gateway.client import GatewayInfo


class Gateway(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, str | None]] = []

    def _answer(self) -> None:
        Gateway.seen.append((self.command, self.path, self.headers.get("authorization") or
                             self.headers.get("x-api-key")))
        body = json.dumps({"reloaded": True, "generation": 2}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


def test_no_call_goes_through_a_proxy_named_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = socket.create_server(("127.0.0.1", 0))  # would-be proxy: it only counts who connects
    proxy.settimeout(0.5)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.getsockname()[1]}")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    try:
        info = GatewayInfo(url=f"http://127.0.0.1:{server.server_port}", pid=0, token="fleet-secret")
        assert info.is_healthy() and info.stats() == {"reloaded": True, "generation": 2}
        assert info.reload() == (200, {"reloaded": True, "generation": 2})
        with pytest.raises(TimeoutError):
            proxy.accept()  # nobody came to the proxy
        assert [auth for _, _, auth in Gateway.seen] == ["fleet-secret", "fleet-secret", "Bearer fleet-secret"]
    finally:
        server.shutdown()
        proxy.close()
