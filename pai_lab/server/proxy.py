"""A small streaming HTTP/1.1 relay to the control plane.

Why not ``AsyncHTTPClient``: a proxy must (a) stream request bodies with back-pressure
(uploads of model files), (b) stream responses chunk by chunk with back-pressure (``logs
?follow=1`` can stay open for hours), and (c) drop the upstream connection the moment the
browser goes away. ``tornado.http1connection`` gives all three with public API; the
simple client cannot abort an in-flight fetch.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from tornado import httputil
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.iostream import StreamClosedError
from tornado.tcpclient import TCPClient

# Hop-by-hop and per-connection headers: never forwarded in either direction.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
}

# Request headers a browser sends that the control plane must not see: our own
# credentials replace them (the user's Jupyter cookie/token means nothing upstream).
REQUEST_DROP = HOP_BY_HOP | {
    "authorization",
    "cookie",
    "x-xsrftoken",
    "x-csrftoken",
    "origin",
    "referer",
    "accept-encoding",
    "expect",
}

# Response headers that belong to the upstream server, not to the proxied resource.
RESPONSE_DROP = HOP_BY_HOP | {
    "server",
    "date",
    "set-cookie",
    "content-security-policy",
    "x-content-type-options",
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-headers",
    "access-control-allow-methods",
}


class UpstreamUnavailable(Exception):
    """The control plane could not be reached (refused, DNS, TLS, timeout)."""


class Upstream(httputil.HTTPMessageDelegate):
    """One request to the control plane, relayed through callbacks.

    ``on_headers(code, reason, headers)`` runs once; ``on_chunk(bytes)`` may return an
    awaitable, which is awaited before the next chunk is read (back-pressure).
    """

    def __init__(
        self,
        on_headers: Callable[[int, str, httputil.HTTPHeaders], None],
        on_chunk: Callable[[bytes], Awaitable[None] | None],
    ) -> None:
        self._on_headers = on_headers
        self._on_chunk = on_chunk
        self.conn: HTTP1Connection | None = None
        self.finished = False
        self.got_headers = False

    async def open(
        self,
        url: str,
        method: str,
        headers: httputil.HTTPHeaders,
        *,
        connect_timeout: float,
        header_timeout: float | None,
    ) -> None:
        """Connect and send the request line and headers (the body follows via write)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamUnavailable(f"control plane URL {url!r} is not an http(s) URL")
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        ssl_options = ssl.create_default_context() if https else None
        try:
            stream = await TCPClient().connect(
                parts.hostname, port, ssl_options=ssl_options, timeout=connect_timeout
            )
        except Exception as e:  # refused, unresolvable, TLS failure, timeout
            reason = str(e) or type(e).__name__
            raise UpstreamUnavailable(reason) from None
        stream.set_nodelay(True)
        self.conn = HTTP1Connection(
            stream,
            True,
            HTTP1ConnectionParameters(
                no_keep_alive=True,
                decompress=False,
                header_timeout=header_timeout,
                max_body_size=1 << 50,
                chunk_size=1 << 16,
            ),
        )
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        headers["Host"] = parts.netloc
        headers["Connection"] = "close"
        try:
            await self.conn.write_headers(
                httputil.RequestStartLine(method, path, "HTTP/1.1"), headers
            )
        except StreamClosedError:
            raise UpstreamUnavailable("connection closed while sending the request") from None

    async def write(self, chunk: bytes) -> None:
        assert self.conn is not None
        try:
            await self.conn.write(chunk)
        except StreamClosedError:
            raise UpstreamUnavailable("connection closed while sending the body") from None

    async def finish_request_and_relay(self) -> None:
        """End the request body, then read the response, relaying it as it arrives."""
        assert self.conn is not None
        try:
            self.conn.finish()
        except StreamClosedError:
            raise UpstreamUnavailable("connection closed while sending the body") from None
        except httputil.HTTPOutputError as e:
            raise UpstreamUnavailable(f"request body did not match its length ({e})") from None
        ok = await self.conn.read_response(self)
        if not self.got_headers:
            # Closed (or header timeout) before any response line.
            raise UpstreamUnavailable(
                "no response (the connection closed or timed out before any header arrived)"
            )
        del ok

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    # HTTPMessageDelegate -------------------------------------------------
    def headers_received(self, start_line, headers):  # type: ignore[override]
        if 100 <= start_line.code < 200:
            return None
        self.got_headers = True
        self._on_headers(start_line.code, start_line.reason, headers)
        return None

    def data_received(self, chunk: bytes):  # type: ignore[override]
        return self._on_chunk(chunk)

    def finish(self) -> None:
        self.finished = True

    def on_connection_close(self) -> None:
        pass


def forward_request_headers(incoming: httputil.HTTPHeaders) -> httputil.HTTPHeaders:
    """Copy what the control plane needs (type, length, accept, ranges) and nothing else."""
    out = httputil.HTTPHeaders()
    for name, value in incoming.get_all():
        if name.lower() in REQUEST_DROP or name.lower().startswith(("x-forwarded-", "sec-")):
            continue
        out.add(name, value)
    return out
