"""Why the last bearer token of this request was refused, for the 401 answer.

The MCP SDK's token verifier interface returns only "no access"; its middleware then answers "Authentication
required" whether the token was missing, expired or signed with another key, and a user cannot tell a wrong
configuration from a forgotten header. The verifier notes the reason here (a context variable: the SDK's
authentication backend and the 401 answer run in the same request task), and server/auth_errors.py says it.
The reason names the failed check only, never the token or a key.
"""

from __future__ import annotations

from contextvars import ContextVar

_reason: ContextVar[str | None] = ContextVar("exai_token_rejection", default=None)

JWT_REASONS = {
    "ExpiredSignatureError": "expired",
    "InvalidSignatureError": "bad signature",
    "InvalidAudienceError": "wrong audience",
    "InvalidIssuerError": "wrong issuer",
    "ImmatureSignatureError": "not yet valid (nbf)",
    "InvalidIssuedAtError": "issued in the future (iat)",
    "MissingRequiredClaimError": "a required claim is missing (exp, iat)",
    "InvalidAlgorithmError": "signed with an algorithm this server does not accept",
    "DecodeError": "not a well-formed JWT",
    "PyJWKClientError": "no key in the JWKS for its kid",
    "PyJWKClientConnectionError": "the JWKS could not be fetched",
}


def clear() -> None:
    _reason.set(None)


def note(reason: str) -> None:
    _reason.set(reason)


def note_jwt_error(exc: Exception) -> None:
    """The reason for a PyJWT (or key-loading) exception, by its class or the nearest known base class."""
    for cls in type(exc).__mro__:
        if cls.__name__ in JWT_REASONS:
            _reason.set(JWT_REASONS[cls.__name__])
            return
    _reason.set("not a valid token")


def last() -> str | None:
    return _reason.get()
