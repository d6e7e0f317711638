"""What the HTTP layer knows about one request, in one typed object under one scope key.

The edge makes the context as a request arrives (`open_context`); admission adds the
principal and its rate headers; routes, dependencies and the error map read it with
`context_of(scope)` (`context_of(request.scope)` from a Request); the edge reads it again for
the response headers and the access line. Nothing else about a request lives in the scope.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import Scope

from filewallball.domain.security import Network, Principal, in_any, parse_address

# Not "state": the server copies its lifespan state there, and Starlette's Request.state
# is an untyped view of it.
_KEY = "filewallball.context"


@dataclass(slots=True)
class RequestContext:
    """One request's identity, as the edge and admission established it."""

    request_id: str
    # The client by the trusted-proxy rules (client_address), not necessarily the socket peer.
    client_ip: str | None
    # Only a trusted proxy may ask for X-Accel-Redirect answers (routes/content.py).
    from_trusted_proxy: bool
    # None until admission admitted a key (and on paths open without one).
    principal: Principal | None = None
    # Added to the response by the edge: admission's RateLimit headers.
    response_headers: Sequence[tuple[bytes, bytes]] = ()


def open_context(
    scope: Scope, *, request_id: str, trusted_proxies: tuple[Network, ...]
) -> RequestContext:
    """The context of a request that just arrived, stored in its scope."""
    via_proxy = from_trusted_proxy(scope, trusted_proxies)
    context = RequestContext(
        request_id, client_address(scope, trusted_proxies, via_proxy=via_proxy), via_proxy
    )
    scope[_KEY] = context
    return context


def context_of(scope: Scope) -> RequestContext:
    """The request's context; KeyError for a scope the edge has not seen."""
    context: RequestContext = scope[_KEY]
    return context


def client_address(scope: Scope, trusted: tuple[Network, ...], *, via_proxy: bool) -> str | None:
    """The socket peer, or when it is a trusted proxy (`via_proxy`, from_trusted_proxy) the
    right-most untrusted X-Forwarded-For hop (the left-most when all of them are trusted)."""
    peer = scope.get("client")
    address = peer[0] if peer else None
    if not via_proxy:
        return address  # an untrusted peer's X-Forwarded-For is ignored: it could say anything
    forwarded = ",".join(Headers(scope=scope).getlist("x-forwarded-for"))
    furthest = address
    for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
        parsed = parse_address(hop)
        if parsed is None:
            return address  # a garbled chain: trust only what we saw ourselves
        if not in_any(parsed, trusted):
            return str(parsed)
        furthest = str(parsed)
    # Every hop is a trusted proxy (Prometheus, in the proxies' network, through the pod's
    # nginx): the client is the furthest of them, not the nearest.
    return furthest


def from_trusted_proxy(scope: Scope, trusted: tuple[Network, ...]) -> bool:
    """Whether the socket peer is one of the trusted proxies."""
    peer = scope.get("client")
    return bool(trusted) and peer is not None and in_any(parse_address(peer[0]), trusted)
