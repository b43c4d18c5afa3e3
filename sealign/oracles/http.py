"""JSON over HTTP with retries, for the remote-oracle client (`sealign serve-oracle`).

The standard library's urllib is enough here: one blocking request per call, used from a
small thread pool where concurrency is wanted, and no extra dependency to pin.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Optional

from sealign.errors import SealignError

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class HTTPFailure(SealignError):
    """A request that failed for good: retries spent, or an answer no retry can change."""


def post_json(
    url: str,
    body: Optional[dict],
    *,
    headers: Optional[dict[str, str]] = None,
    timeout: float,
    retries: int,
    backoff: float,
) -> Any:
    """POST `body` (GET when None) and return the decoded JSON answer.

    Timeouts, refused or reset connections, 429 and 5xx are retried after backoff * 2^k seconds
    (k = 0, 1, ...), so the caller must make a repeated request harmless (the remote oracle
    sends a request id). Other 4xx answers fail at once. Error texts never include headers,
    which may carry a key.
    """
    data = None if body is None else json.dumps(body).encode()
    request_headers = {"Content-Type": "application/json", **(headers or {})}
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        request = urllib.request.Request(url, data=data, headers=request_headers, method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            detail = e.read()[:200].decode(errors="replace")
            if e.code not in RETRY_STATUS:
                raise HTTPFailure(f"{url}: HTTP {e.code}: {detail}") from None
            last = f"HTTP {e.code}"
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as e:
            last = str(getattr(e, "reason", e)) or type(e).__name__
        except json.JSONDecodeError:
            last = "an answer that is not JSON"
    raise HTTPFailure(f"{url}: no answer after {retries + 1} tries (last: {last})")
