"""The relay's HTTP client, guarded at connect time against SSRF (docs/agents.md).

The check is on the address the relay actually connects to, not on the URL's text: the
network backend resolves the host itself, judges every address it resolves to with the
:class:`~spine_registry.addresses.AddressPolicy`, and connects to a checked IP. A DNS
answer that changes between registration and call (rebinding), a decimal
(``http://2130706433/``) or IPv4-mapped (``http://[::ffff:127.0.0.1]/``) host therefore
gain nothing. TLS still verifies the certificate against the URL's host name (httpcore
passes the origin's host as ``server_hostname``). The client ignores proxy and other
environment settings (``trust_env=False``) and follows no redirects, so a ``3xx`` answer
is an error result rather than a second, unchecked call.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from ..addresses import AddressPolicy, AddressRefused, check_resolved, resolve


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to addresses the policy allows."""

    def __init__(
        self, policy: AddressPolicy, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self.policy = policy
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await resolve(host, port, timeout)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        # every address first: a name must not mix a public address with a refused one
        check_resolved(self.policy, host, addresses)
        last: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None  # getaddrinfo never answers an empty list
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused(path, path, "unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` whose connection pool uses :class:`GuardedBackend`.

    httpx 0.28 takes no network backend, so the pool it builds is replaced by an
    identical one with ours (the test of the guard fails if that ever stops working).
    """

    def __init__(self, policy: AddressPolicy, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, trust_env=False)
        old = self._pool
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=old._ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=GuardedBackend(policy),
        )


def guarded_client(
    policy: AddressPolicy, limits: httpx.Limits | None = None, **kwargs: Any
) -> httpx.AsyncClient:
    """The relay's one client: guarded connects, no environment, no redirects."""
    return httpx.AsyncClient(
        transport=GuardedTransport(policy, limits or httpx.Limits()),
        trust_env=False,
        follow_redirects=False,
        **kwargs,
    )


def refused_cause(exc: BaseException) -> AddressRefused | None:
    """The :class:`AddressRefused` behind an httpx error, if that is what it is."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, AddressRefused):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None
