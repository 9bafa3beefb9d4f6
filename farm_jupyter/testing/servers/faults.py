"""The failures a loopback server can be told to produce, and how one is picked for a request.

A fault is data (which requests, how often, what goes wrong); the servers read it at each request,
so a test states the failure once and counts its `hits` afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

FaultKind = Literal["status", "delay", "drop", "malformed", "error_line", "hang", "echo", "foreign"]

KINDS = frozenset({"status", "delay", "drop", "malformed", "error_line", "hang", "echo", "foreign"})
STREAM_FAULTS = frozenset({"drop", "malformed", "error_line"})
HANG_LIMIT = 60.0
# What a web server that is not the API answers (nginx's 404 page, give or take).
FOREIGN_PAGE = (
    "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n"
    "<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx/1.24.0</center>\r\n</body>\r\n</html>\r\n"
)


@dataclass
class Fault:
    """A failure to inject into the requests that match `path` (None: any path).

    - status: answer `status` with `body` (the protocol's error shape by default) and Retry-After.
    - delay: wait `delay` seconds before answering; composes with one other fault.
    - drop: after `after` chunks, close the socket without the terminating chunk.
    - malformed: after `after` chunks, send a line that is not JSON, then end the stream.
    - error_line: after `after` chunks, send the protocol's in-stream error, then end the stream.
    - hang: never answer, until the server stops (at most 60 s).
    - echo: answer `status` (say 401) the way a careless server or proxy does: the credential the
      request carried (a Bearer key, an api-key header, a basic-auth password) quoted back whole,
      without its `sk-`-style prefix, url-encoded and in part, in the error body and in the
      WWW-Authenticate and X-Echo-* headers.
    - foreign: answer `status` (say 404) as a server that does not speak this protocol does:
      `text` as the body (an nginx 404 page by default; "" for an empty body) as text/html when it
      looks like HTML, else text/plain. For JSON that is not the protocol's, use `status` with `body`.

    Non-streamed answers get the same faults as whole bodies (half a body, a broken body, a 500).
    A fault applies to the first `times` matching requests (None: all), each with `probability`
    drawn from the server's seeded generator; `hits` counts the applications.
    """

    kind: FaultKind
    path: str | None = None
    times: int | None = 1
    status: int = 500
    body: dict[str, Any] | None = None
    text: str | None = None
    retry_after: float | None = None
    delay: float = 0.0
    after: int = 0
    probability: float = 1.0
    hits: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {sorted(KINDS)}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1], got {self.probability}")


def pick(faults: Iterable[Fault], path: str, rng: random.Random) -> tuple[float, Fault | None]:
    """The summed delay and the one other fault that apply to a request for `path`, counting hits.

    The caller holds the lock that guards `faults`, so `times` is exact under concurrency.
    """
    delay, chosen = 0.0, None
    for fault in faults:
        if fault.path is not None and fault.path != path:
            continue
        if fault.times is not None and fault.hits >= fault.times:
            continue
        if fault.kind != "delay" and chosen is not None:
            continue
        if fault.probability < 1.0 and rng.random() >= fault.probability:
            continue
        fault.hits += 1
        if fault.kind == "delay":
            delay += fault.delay
        else:
            chosen = fault
    return delay, chosen


def echoed(headers: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The error message and headers of an `echo` fault: the request's credential, leaked in every
    form a redaction filter has to catch (whole, bare, url-encoded, a middle slice)."""
    raw = headers.get("authorization") or headers.get("api-key") or headers.get("x-api-key") or ""
    scheme, _, credential = raw.partition(" ")
    if not credential:
        scheme, credential = "", raw
    elif scheme.lower() == "basic":
        with contextlib.suppress(ValueError):
            credential = base64.b64decode(credential).decode().partition(":")[2]
    bare = re.sub(r"^[A-Za-z]{2,4}[-_](?:proj-)?", "", credential)
    middle = credential[len(credential) // 4 : len(credential) // 4 + 10]
    encoded = quote(credential, safe="")
    message = (
        f"invalid credentials {credential!r} (token={bare}; encoded={encoded}; "
        f"the key containing ...{middle}... is not valid; you sent: {raw})"
    )
    extra = {
        "WWW-Authenticate": f'Bearer realm="farm-testing", error="invalid_token", '
        f'error_description="token={bare} is not valid"',
        "X-Echo-Authorization": raw,
        "X-Echo-Token": encoded,
    }
    return message, extra
