"""Admission, the gate every request passes before any route: IP rules, API key, rate limit.

The client address it judges is the request context's (context.py, by the trusted-proxy
rules); the paths open without a key are routes/paths.py's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from filewallball.domain.access import AccessService, Auditor
from filewallball.domain.errors import FileWallBallError, RateLimited, Unauthenticated
from filewallball.domain.ports import RateLimiter
from filewallball.domain.rates import RateDecision, RateRule
from filewallball.domain.security import Network, Principal
from filewallball.entrypoints.http.context import RequestContext, context_of
from filewallball.entrypoints.http.errors import problem_for
from filewallball.entrypoints.http.routes.paths import (
    is_tus_discovery,
    is_upload,
    open_without_key,
)


@dataclass(frozen=True, slots=True)
class AdmissionRules:
    """The settings admission applies (FWB_RATE_LIMIT, FWB_PUBLIC_DOCS, ...), parsed once."""

    rate_limit: RateRule
    upload_rate_limit: RateRule
    public_docs: bool
    metrics_cidrs: tuple[Network, ...] = ()


def _rate_headers(decision: RateDecision, policy: str) -> list[tuple[bytes, bytes]]:
    """IETF draft-ietf-httpapi-ratelimit-headers: RateLimit-Policy and RateLimit."""
    return [
        (
            b"ratelimit-policy",
            f'"{policy}";q={decision.limit};w={decision.window_seconds}'.encode(),
        ),
        (
            b"ratelimit",
            f'"{policy}";r={decision.remaining};t={decision.reset_after_seconds}'.encode(),
        ),
    ]


class Admission:
    """Pure ASGI: decides who the caller is before any route runs.

    It wraps nothing: its RateLimit headers go to the request context, whose response headers
    the edge adds to the response.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        access: Callable[[], AccessService],
        limiter: Callable[[], RateLimiter],
        auditor: Callable[[], Auditor],
        config: AdmissionRules,
    ) -> None:
        self.app = app
        self._access = access
        self._limiter = limiter
        self._auditor = auditor
        self._config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = context_of(scope)
        config = self._config
        if is_tus_discovery(scope) or open_without_key(
            scope["path"],
            context.client_ip,
            public_docs=config.public_docs,
            metrics_cidrs=config.metrics_cidrs,
        ):
            await self.app(scope, receive, send)
            return
        try:
            principal = await self._admit(scope, context)
        except FileWallBallError as error:
            refusal = await problem_for(error, scope, self._auditor)
            await refusal(scope, receive, send)
            return
        context.principal = principal
        with structlog.contextvars.bound_contextvars(key_id=principal.key_id):
            await self.app(scope, receive, send)

    async def _admit(self, scope: Scope, context: RequestContext) -> Principal:
        client_ip = context.client_ip
        access = self._access()
        await access.check_address(client_ip)
        authorization = Headers(scope=scope).get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        presented = token.strip() if scheme.lower() == "bearer" else None
        try:
            principal = await access.authenticate(
                presented, client_ip=client_ip, request_id=context.request_id
            )
        except Unauthenticated:
            # Failed attempts count against the address, so guessing keys is rate limited too.
            await self._limit(f"ip:{client_ip}", self._config.rate_limit, "default", context)
            raise
        upload = is_upload(scope)
        rule = self._config.upload_rate_limit if upload else self._config.rate_limit
        policy = "upload" if upload else "default"
        await self._limit(f"key:{principal.key_id}", rule, policy, context)
        return principal

    async def _limit(
        self, identity: str, rule: RateRule, policy: str, context: RequestContext
    ) -> None:
        decision = await self._limiter().hit(f"{policy}:{identity}", rule=rule)
        context.response_headers = _rate_headers(decision, policy)
        if not decision.allowed:
            raise RateLimited(
                f"more than {rule} requests; retry in {decision.reset_after_seconds} s",
                retry_after_seconds=decision.reset_after_seconds,
            )
