"""Bearer tokens and roles, checked in one place for the whole cloud API (the dashboard's routes included).

A viewer token reads, an operator token also acts. Tokens may be written `name:token`; the name is the actor
the audit log records. No token configured at all: the API is open (the caller is `anonymous`, an operator).
No or an unknown token -> `Unauthorized` (401), a viewer token on an operator route -> `Forbidden` (403).
EventSource cannot send headers, so the dashboard's routes also take the token as `?token=`.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Query, Request

from cloud_sync.api.context import CloudContext, Principal, Role
from contracts.errors import Forbidden, Unauthorized

__all__ = ["Auth"]


class Auth:
    """The token table of a cloud, and the FastAPI dependencies that check a request against it."""

    def __init__(self, ctx: CloudContext) -> None:
        self._table: dict[str, Principal] = {}
        for role, tokens in (("viewer", ctx.viewer_tokens), ("operator", ctx.operator_tokens)):
            for entry in tokens:
                name, _, secret = entry.rpartition(":")
                name = name or f"{role}-{hashlib.sha256(secret.encode()).hexdigest()[:6]}"
                self._table[secret] = Principal(name, role)  # type: ignore[arg-type]

    @property
    def required(self) -> bool:
        """Whether any token is configured (else the API is open)."""
        return bool(self._table)

    def identify(self, token: str | None, needed: Role = "viewer") -> Principal:
        """The principal a token names, if it has the `needed` role; the one bearer-token check."""
        if not self._table:
            return Principal("anonymous", "operator")
        if not token:
            raise Unauthorized("missing bearer token: send Authorization: Bearer TOKEN")
        principal = next((p for secret, p in self._table.items() if hmac.compare_digest(secret, token)), None)
        if principal is None:
            raise Unauthorized("unknown token")
        if needed == "operator" and principal.role != "operator":
            raise Forbidden(f"token of {principal.name} is a viewer token; this needs an operator token")
        return principal

    def viewer(self, request: Request) -> Principal:
        """Dependency: a viewer or operator token in the Authorization header."""
        return self.identify(_bearer(request))

    def operator(self, request: Request) -> Principal:
        """Dependency: an operator token in the Authorization header."""
        return self.identify(_bearer(request), "operator")

    def viewer_or_query(self, request: Request, token: str | None = Query(None, include_in_schema=False)) -> Principal:
        """Dependency for the dashboard's reads: the Authorization header, else `?token=` (EventSource)."""
        return self.identify(_bearer(request) or token)


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None
