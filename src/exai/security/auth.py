"""Bearer authentication for the HTTP daemon, as the MCP SDK's token verifier.

Accepts JWTs (HS256 with a shared secret, RS256/ES256 with a PEM public key, or any key from a JWKS URL, fetched
without threads and refreshed when an unknown `kid` appears: see `jwks.py`) and opaque API keys (`exai_...`, stored
as SHA-256 hashes, revoked by removing the entry). The algorithm list is fixed by the kind of key configured, so
`alg: none` and algorithm confusion (an HS256 token signed with a public key) are refused. The tenant
comes from a configurable claim.

A verified JWT is remembered until it expires (`VerifiedTokens`), so a client that sends one token with every request
pays for its signature once. The cache is keyed by the token's SHA-256 (never the token), bounded, refuses an entry
the moment its token expires, and with a JWKS drops an entry as soon as the key that verified it is no longer the
set's key for its `kid` (revoked or rotated).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.types import Scope

from exai.observability.logging import get_logger
from exai.security import token_rejections
from exai.security.jwks import JwksKeys, UnknownSigningKey

log = get_logger(__name__)
LEEWAY_SECONDS = 30
MAX_TENANT_CHARS = 128
API_KEY_PREFIX = "exai_"
ADMIN_SCOPE = "exai:admin"
TOOLS_SCOPE = "exai:tools"
METRICS_SCOPE = "exai:metrics"
"""Reads /metrics and nothing else: the token a Prometheus scraper keeps on disk."""
VERIFIED_TOKENS = 4096
"""Verified JWTs remembered at most (least recently used first out)."""
ADMIN_TOOLS = frozenset({"status"})
COLLECT_TOOL = "collect"
_TOOL_SCOPE = re.compile(r"exai:tool:[a-z][a-z0-9_]*")
LOCAL_TENANT = "local"
"""The one tenant of a daemon without authentication."""


@dataclass(frozen=True)
class ApiKey:
    digest: str
    tenant: str
    scopes: tuple[str, ...]


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key(tenant: str, scopes: list[str]) -> tuple[str, str]:
    """A fresh key and the EXAI_API_KEYS entry that accepts it (only the hash is stored)."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, f"{hash_api_key(key)}:{tenant}:{'+'.join(scopes)}"


def parse_api_keys(entries: list[str]) -> list[ApiKey]:
    keys = []
    for entry in entries:
        digest, _, rest = entry.partition(":")
        tenant, _, scopes = rest.partition(":")
        if len(digest) != 64 or not tenant:
            raise ValueError(f"EXAI_API_KEYS entry '{entry[:20]}…' is not sha256hex:tenant:scope+scope")
        keys.append(ApiKey(digest.lower(), tenant, tuple(s for s in scopes.split("+") if s)))
    return keys


def may_call(tool: str, scopes: list[str]) -> bool:
    """`exai:admin` may call anything; admin tools need it; others need `exai:tools` or `exai:tool:<name>`.

    `collect` (a pending answer of the caller's own tenant) comes with any well-formed scope that allows a tool (a
    malformed one such as `exai:tool:version,exai:admin`, read as one scope, allows nothing)."""
    if ADMIN_SCOPE in scopes:
        return True
    if tool in ADMIN_TOOLS:
        return False
    if tool == COLLECT_TOOL:  # which calls it may read is checked per call, against the tool that made it
        return any(scope == TOOLS_SCOPE or _TOOL_SCOPE.fullmatch(scope) for scope in scopes)
    return TOOLS_SCOPE in scopes or f"exai:tool:{tool}" in scopes


def visible_tools(names: Iterable[str], scopes: list[str] | None) -> list[str]:
    """The tools, of `names` and in their order, that a token with `scopes` may call (all of them without auth).

    Listings and error messages name only these, so a narrow token learns nothing about the other tools.
    """
    return [name for name in names if scopes is None or may_call(name, scopes)]


def request_access(scope: Scope) -> AccessToken | None:
    """The verified token of an HTTP request (set by the SDK's authentication middleware), if any."""
    user = scope.get("user")
    return user.access_token if isinstance(user, AuthenticatedUser) else None


def token_tenant(token: AccessToken | None) -> str:
    """The one definition of the tenant: a verified token's subject (`JWTVerifier` puts the tenant there), or the
    local tenant when there is no token (stdio, or a daemon without auth)."""
    return token.subject if token is not None and token.subject else LOCAL_TENANT


def request_tenant(scope: Scope, auth_enabled: bool) -> str | None:
    """Who an HTTP request is from: the token's tenant; the local tenant without auth; None if unauthenticated."""
    if not auth_enabled:
        return LOCAL_TENANT
    access = request_access(scope)
    return None if access is None else token_tenant(access)


@dataclass(frozen=True)
class _Verified:
    access: AccessToken
    valid_until: float
    """Unix time from which the token is refused (its `exp` plus the leeway)."""
    kid: str | None
    key: Any


class VerifiedTokens:
    """Tokens verified earlier and still valid, by the SHA-256 of the token: bounded, least recently used out."""

    def __init__(self, size: int = VERIFIED_TOKENS) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, _Verified] = OrderedDict()

    def get(self, digest: bytes, now: float) -> _Verified | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if now >= entry.valid_until:  # refused the moment it expires, not when the entry ages out
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return entry

    def put(self, digest: bytes, entry: _Verified) -> None:
        self._entries[digest] = entry
        self._entries.move_to_end(digest)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, digest: bytes) -> None:
        self._entries.pop(digest, None)

    def __len__(self) -> int:
        return len(self._entries)


class JWTVerifier:
    """The daemon's `TokenVerifier`: returns an `AccessToken` whose `subject` is the tenant, or None."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key: str | None = None,
        jwks_url: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        tenant_claim: str = "sub",
        api_keys: list[ApiKey] | None = None,
    ) -> None:
        # The JWT and cryptography stack loads only where tokens are verified or issued.
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        self.issuer = issuer
        self.audience = audience
        self.tenant_claim = tenant_claim
        self.api_keys = {k.digest: k for k in api_keys or []}
        self._key: Any = None
        self._algorithms: list[str] = []
        self._jwks: JwksKeys | None = None
        if secret:
            self._key, self._algorithms = secret, ["HS256"]
        elif public_key:
            self._key = load_pem_public_key(public_key.encode())
            if isinstance(self._key, rsa.RSAPublicKey):
                self._algorithms = ["RS256"]
            elif isinstance(self._key, ec.EllipticCurvePublicKey):
                self._algorithms = ["ES256"]
            else:
                raise ValueError("EXAI_JWT_PUBLIC_KEY must be an RSA or EC (P-256) public key in PEM")
        elif jwks_url:
            self._jwks = JwksKeys(jwks_url)
            self._algorithms = ["RS256", "ES256"]
        self.failures = 0
        self.on_failure: Callable[[], None] | None = None
        self.verified = VerifiedTokens()

    async def verify_token(self, token: str) -> AccessToken | None:
        token_rejections.clear()
        access = await self._verify(token)
        if access is None:
            self.failures += 1
            if self.on_failure is not None:
                self.on_failure()
        return access

    async def _verify(self, token: str) -> AccessToken | None:
        if token.startswith(API_KEY_PREFIX):
            return self._verify_api_key(token)
        if not self._algorithms:
            token_rejections.note("not an API key of this server (it accepts API keys only)")
            return None
        digest = hashlib.sha256(token.encode()).digest()
        cached = self.verified.get(digest, time.time())
        if cached is not None:
            if self._jwks is None:
                return cached.access
            try:  # the set may have been refreshed since: the key that verified the token must still be its key
                if await self._jwks.key(cached.kid) is cached.key:
                    return cached.access
            except UnknownSigningKey:
                pass
            self.verified.drop(digest)
        import jwt

        kid: str | None = None
        try:
            key = self._key
            if self._jwks is not None:
                kid = jwt.get_unverified_header(token).get("kid")
                key = await self._jwks.key(kid)
            claims = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat"], "verify_aud": self.audience is not None},
            )
        except (jwt.PyJWTError, UnknownSigningKey, ValueError) as exc:
            log.info("token_rejected", reason=type(exc).__name__)
            token_rejections.note_jwt_error(exc)
            return None
        tenant = claims.get(self.tenant_claim)
        if not isinstance(tenant, str) or not tenant:
            log.info("token_rejected", reason=f"no '{self.tenant_claim}' claim")
            token_rejections.note(f"no '{self.tenant_claim}' claim")
            return None
        if len(tenant) > MAX_TENANT_CHARS or not tenant.isprintable():
            # The tenant is shown in logs, the audit listing and the status page: no control characters.
            log.info("token_rejected", reason=f"'{self.tenant_claim}' claim is not a printable name of at most 128")
            token_rejections.note(f"the '{self.tenant_claim}' claim is not a printable name of at most 128")
            return None
        scopes = claims.get("scope", claims.get("scopes", ""))
        scope_list = scopes.split() if isinstance(scopes, str) else [str(s) for s in scopes]
        access = AccessToken(
            token=token,
            client_id=str(claims.get("client_id", tenant)),
            scopes=scope_list,
            # The SDK's middleware re-checks expiry on every request; the leeway for clock skew applies there too.
            expires_at=int(claims["exp"]) + LEEWAY_SECONDS,
            subject=tenant,
            claims={"iss": claims.get("iss")},
        )
        self.verified.put(digest, _Verified(access, float(claims["exp"]) + LEEWAY_SECONDS, kid, key))
        return access

    def _verify_api_key(self, token: str) -> AccessToken | None:
        digest = hash_api_key(token)
        for known, entry in self.api_keys.items():
            if hmac.compare_digest(known, digest):
                return AccessToken(token=token, client_id=entry.tenant, scopes=list(entry.scopes), subject=entry.tenant)
        token_rejections.note("unknown or revoked API key")
        return None


def issue_token(
    secret: str,
    subject: str,
    scopes: list[str],
    ttl_seconds: int,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    import jwt

    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "scope": " ".join(scopes),
        "iat": now,
        "nbf": now,
        "exp": now + ttl_seconds,
    }
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")
