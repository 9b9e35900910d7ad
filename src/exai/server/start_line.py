"""The one line `exai serve` logs once it is ready: where MCP is served and how it is set up.

A new user (or an operator reading a pod's log) sees at once which URL to give clients, whether tokens are
required, which store holds the threads (and its schema version), which directories tools may read, and whether
the daemon keeps MCP sessions.
"""

from __future__ import annotations

from typing import Any

from exai.app import Services


def auth_mode(services: Services) -> str:
    """`none`, or the token kinds accepted, e.g. `jwt-hs256+api-keys`."""
    settings = services.settings
    kinds = [
        name
        for name, configured in (
            ("jwt-hs256", settings.jwt_secret),
            ("jwt-public-key", settings.jwt_public_key),
            ("jwks", settings.jwt_jwks_url),
            ("api-keys", settings.api_keys),
        )
        if configured
    ]
    return "+".join(kinds) or "none"


def start_fields(services: Services) -> dict[str, Any]:
    settings = services.settings
    return {
        "mcp_url": settings.public_url or f"http://{settings.host}:{settings.port}/mcp",
        "auth": auth_mode(services),
        "storage": services.store.name,
        "schema_version": services.schema_version,
        "file_roots": [str(root) for root in services.files.roots] or "none (tools read no files)",
        "stateless": settings.stateless_http,
        "providers": sorted(services.router.providers),
    }
