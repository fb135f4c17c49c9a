"""Blocking HTTP requests through wasi:http, the only way out of a step's sandbox.

Only hosts the pipeline granted are reachable: a request to any other host fails
with `HttpError` before a connection is made, naming the grant to add.
"""

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from componentize_py_types import Err
from wit_world.imports import outgoing_handler, streams
from wit_world.imports import wasi_http_types as http


class HttpError(Exception):
    """The request could not be made (invalid URL, connection failed, ...)."""


class HttpDenied(HttpError):
    """The host is not among those the pipeline granted the step."""


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


_METHODS = {
    "GET": http.Method_Get(),
    "HEAD": http.Method_Head(),
    "POST": http.Method_Post(),
    "PUT": http.Method_Put(),
    "DELETE": http.Method_Delete(),
    "PATCH": http.Method_Patch(),
}


def request(method: str, url: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> Response:
    """Sends one request and reads the whole response."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        raise HttpError(f"`{url}` must be an http:// or https:// URL with a host")
    entries = [(k.lower(), v.encode()) for k, v in (headers or {}).items()]
    if body is not None and not any(k == "content-length" for k, _ in entries):
        entries.append(("content-length", str(len(body)).encode()))
    req = http.OutgoingRequest(http.Fields.from_list(entries))
    req.set_method(_METHODS.get(method.upper()) or http.Method_Other(method.upper()))
    req.set_scheme(http.Scheme_Https() if parts.scheme == "https" else http.Scheme_Http())
    req.set_authority(parts.netloc)
    req.set_path_with_query((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    outgoing = req.body() if body is not None else None
    try:
        future = outgoing_handler.handle(req, None)
    except Err as e:
        raise _error(e.value, parts.netloc) from None
    if outgoing is not None:
        try:
            # The stream must be gone before the body is finished.
            with outgoing.write() as stream:
                for i in range(0, len(body), 4096):
                    stream.blocking_write_and_flush(body[i : i + 4096])
            http.OutgoingBody.finish(outgoing, None)
        except Err:
            pass  # The request failed on the way: the response says why, below.
    with future:
        while (ready := future.get()) is None:
            with future.subscribe() as pollable:
                pollable.block()
    if isinstance(ready, Err):
        raise HttpError("the response was taken twice")
    inner = ready.value
    if isinstance(inner, Err):
        raise _error(inner.value, parts.netloc)
    response = inner.value
    status = response.status()
    with response.headers() as fields:
        response_headers = [(k, v.decode("utf-8", "replace")) for k, v in fields.entries()]
    data = bytearray()
    with response.consume() as incoming:
        with incoming.stream() as stream:
            while True:
                try:
                    data += stream.blocking_read(64 * 1024)
                except Err as e:
                    if isinstance(e.value, streams.StreamError_Closed):
                        break
                    raise HttpError(f"reading the response from `{parts.netloc}` failed") from None
    return Response(status, response_headers, bytes(data))


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> Response:
    """`request("POST", ...)`."""
    return request("POST", url, headers, body)


def _error(code, authority: str) -> HttpError:
    if isinstance(code, http.ErrorCode_HttpRequestDenied):
        return HttpDenied(
            f"outbound HTTP to `{authority}` is not allowed: add it to the step's `permissions.hosts` in the pipeline"
        )
    return HttpError(f"HTTP request to `{authority}` failed: {type(code).__name__.removeprefix('ErrorCode_')}")
