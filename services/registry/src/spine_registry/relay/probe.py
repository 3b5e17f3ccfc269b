"""Health probe of an HTTP agent: ``GET {endpoint}/health`` → ready or why not.

Ready means a 2xx answer whose JSON object does not say ``"ready": false``. The rest of
the body (``capabilities``, ``version``) is read leniently: agents written for the
original product answer more or less than :class:`~spine_agent.http.HttpHealth`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
import orjson

from ..addresses import AddressRefused
from .delivery import describe_transport_error, excerpt, invalid_endpoint
from .signing import Sign


@dataclass(frozen=True)
class ProbeResult:
    ready: bool
    reason: str
    capabilities: tuple[str, ...] | None = None
    version: str | None = None


async def probe(
    client: httpx.AsyncClient, endpoint: str, within: float, sign: Sign | None = None
) -> ProbeResult:
    """``sign`` adds the relay's signature headers (over the empty body, :mod:`.signing`)."""
    url = endpoint.rstrip("/") + "/health"
    headers = sign(b"") if sign is not None else None
    try:
        async with asyncio.timeout(within):
            response = await client.get(url, headers=headers, timeout=httpx.Timeout(within))
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        return ProbeResult(False, invalid_endpoint(endpoint, exc))
    except AddressRefused as exc:
        return ProbeResult(False, f"{exc}: GET {url}")
    except httpx.ConnectTimeout as exc:
        return ProbeResult(False, describe_transport_error(exc, "GET", url))
    except (TimeoutError, httpx.TimeoutException):
        return ProbeResult(False, f"timed out after {within:g}s: GET {url}")
    except httpx.TransportError as exc:
        return ProbeResult(False, describe_transport_error(exc, "GET", url))
    if response.is_redirect:
        return ProbeResult(
            False, f"HTTP {response.status_code} from {url}: redirects are not followed"
        )
    if not 200 <= response.status_code < 300:
        text = excerpt(response.text) or "(empty body)"
        return ProbeResult(False, f"HTTP {response.status_code} from {url}: {text}")
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return ProbeResult(False, f"invalid health response from {url}: body is not JSON")
    if not isinstance(body, dict):
        return ProbeResult(False, f"invalid health response from {url}: not a JSON object")
    if body.get("ready") is False:
        return ProbeResult(False, f"{url} says ready: false")
    caps = body.get("capabilities")
    version = body.get("version")
    return ProbeResult(
        True,
        "ok",
        capabilities=tuple(c for c in caps if isinstance(c, str))
        if isinstance(caps, list)
        else None,
        version=version if isinstance(version, str) else None,
    )
