"""The serving limits: what one request, and a crowd of them, may ask of the server.

Limits (each an option of create_app and of `peftlab serve`), so that no client, and no crowd
of clients, can make the server hold unbounded memory or hang:

    max_body_bytes  1 MiB  a larger body is refused (413) before it is read; the largest valid
                           request (64 texts of 2,000 characters, JSON-escaped) fits
    max_texts       64     texts per request (413)
    max_chars       2000   characters per text (413)
    max_queue       64     requests waiting for the model; one more is told 429 (retry later,
                           with a Retry-After header) instead of queueing without bound
    request_timeout 30 s   the most the body's upload may take, and again the wait for the
                           model: a client that sends its body too slowly gets 408, a request
                           the model does not answer in time 504 (its work leaves the queue)

A body whose content-type is not JSON gets 415; invalid UTF-8 or JSON 400; wrong types 422;
an unknown adapter 404. Before the batching worker runs and once shutdown has begun every
request gets 503 (and /healthz says "starting" / "stopping"). Every refusal is counted in
/metrics: peftlab_refusals_total{reason=...}, beside peftlab_requests_total by status; the
queue's length is the gauge peftlab_queue_length.
"""

from __future__ import annotations

import asyncio
import json

# the defaults (documented above and in `peftlab serve --help`)
MAX_BODY_BYTES = 1 << 20
MAX_TEXTS = 64
MAX_CHARS = 2000
MAX_QUEUE = 64
REQUEST_TIMEOUT_S = 30.0


class BadRequest(Exception):
    """A request answered with `status` and {"error": message}; `reason` labels the refusal
    in peftlab_refusals_total."""

    def __init__(self, status: int, message: str, reason: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers
        self.reason = reason or {400: "malformed", 404: "unknown_adapter", 408: "slow_client",
                                 409: "conflict", 413: "too_large", 415: "media_type",
                                 422: "wrong_type", 429: "queue_full", 503: "not_ready",
                                 504: "timeout"}.get(status, str(status))


def check_limits(**limits) -> None:
    """Raise ValueError naming the first limit that is not a positive int (max_*) or a
    positive number (max_wait_ms may be 0; request_timeout in seconds)."""
    for name, v in limits.items():
        if name in ("max_wait_ms", "request_timeout"):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1e6 \
                    or (name == "request_timeout" and v == 0):
                raise ValueError(f"{name} must be a positive number of "
                                 f"{'ms' if name == 'max_wait_ms' else 'seconds'}, got {v!r}.")
        elif isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}.")


async def read_body(request, max_body_bytes: int, timeout: float) -> bytes:
    """The body, refused early: a non-JSON content-type (415), more than max_body_bytes (413,
    before reading when Content-Length says so), slower than `timeout` seconds (408)."""
    ctype = request.headers.get("content-type")
    if ctype:
        mime = ctype.split(";")[0].strip().lower()
        if mime != "application/json" and not mime.endswith("+json"):
            raise BadRequest(415, f"content-type {mime!r}: send JSON "
                                  f"(content-type: application/json)")
    length = request.headers.get("content-length")
    if length is not None and (not length.strip().isdigit() or int(length) > max_body_bytes):
        raise BadRequest(413, f"the body has {length} bytes; at most {max_body_bytes} "
                              f"(max_body_bytes)")
    chunks, size = [], 0

    async def read():
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise BadRequest(413, f"the body has more than {max_body_bytes} bytes "
                                      f"(max_body_bytes)")
            chunks.append(chunk)
    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise BadRequest(408, f"the body did not arrive within {timeout:g} s "
                              f"(request_timeout; {size} bytes came)") from None
    return b"".join(chunks)


def _json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"malformed JSON: {e}") from None
    except RecursionError:          # [[[[... nested deeper than Python's parser recurses
        raise BadRequest(400, "malformed JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "the body must be a JSON object")
    return body
