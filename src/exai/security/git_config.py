"""What a reviewed repository's own configuration may ask of git.

The server runs git only on local data: it never fetches, and no command named by the repository runs. Two
layers make that so. Every git call gets options and environment that disable all transports and the commands
git would run while diffing (see `exai.security.git`). And before the first such call, the repository's own
configuration files (`config`, `config.worktree`) are read, without following includes, and:

- refused when they set a key that makes git fetch (partial clones, promisor remotes, any repository extension
  but the object format, ref storage, per-worktree config and precious objects), that allows a transport
  (`protocol.*`), that names a command git runs to reach a remote (`core.sshCommand`, credential helpers,
  upload-pack ...), or that pulls in configuration from another file (`include.*`, `includeIf.*`), which may
  lie outside the roots;
- neutralised for the commands git would run locally: every filter driver the repository defines is emptied
  (diff drivers are off through `--no-ext-diff --no-textconv`; fsmonitor, hooks and pager through options).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from exai.errors import InvalidInput
from exai.security.files import quote_path

_ALLOWED_EXTENSIONS = frozenset({"objectformat", "preciousobjects", "refstorage", "worktreeconfig"})
_REFUSED: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"include\..*|includeif\..*"), "pulls in configuration from another file"),
    (re.compile(r"remote\..*\.(promisor|partialclonefilter)"), "makes git fetch missing objects from a remote"),
    (re.compile(r"protocol\..*"), "allows git transports"),
    (
        re.compile(
            r"core\.(sshcommand|gitproxy|askpass|alternaterefscommand)|credential\.(.*\.)?helper"
            r"|remote\..*\.(vcs|uploadpack|receivepack)|uploadpack\.packobjectshook"
        ),
        "names a command git runs to reach a remote",
    ),
)
_SHOWN_KEYS = 3


@dataclass(frozen=True)
class ConfigEntry:
    key: str
    value: str | None


def parse_config_list(listing: str) -> list[ConfigEntry]:
    """The entries of `git config --list --null` (each `key\\nvalue\\0`, or `key\\0` for a bare boolean).

    Git lowercases the section and the variable name; a subsection (a driver or remote name) keeps its case.
    """
    entries = []
    for item in filter(None, listing.split("\0")):
        key, newline, value = item.partition("\n")
        entries.append(ConfigEntry(key, value if newline else None))
    return entries


def refusal(entry: ConfigEntry) -> str | None:
    """Why the repository may not set this key, or None when git may read it."""
    key = entry.key.lower()
    section, _, name = key.partition(".")
    if section == "extensions" and name not in _ALLOWED_EXTENSIONS:
        return "enables a repository extension this server does not allow (a partial clone fetches missing objects)"
    return next((reason for pattern, reason in _REFUSED if pattern.fullmatch(key)), None)


def check_config(entries: list[ConfigEntry]) -> None:
    """Refuse a repository whose own configuration sets a key git must never act on here."""
    refused = [(entry.key, reason) for entry in entries if (reason := refusal(entry))]
    if not refused:
        return
    shown = "; ".join(f"{quote_path(key)} {reason}" for key, reason in refused[:_SHOWN_KEYS])
    more = f" (and {len(refused) - _SHOWN_KEYS} more)" if len(refused) > _SHOWN_KEYS else ""
    raise InvalidInput(
        f"The repository's configuration is refused: {shown}{more}. The server runs git only on local data and "
        "never runs a command or transport the repository configures.",
        code="repository_config_refused",
        remedy="Run `git diff --staged` and `git diff` yourself and pass the output in `diff`, or remove those "
        "keys from the repository's .git/config (`git config --unset-all KEY`).",
        details={"field": "path"},
    )


def neutralising_environment(entries: list[ConfigEntry]) -> dict[str, str]:
    """Configuration (as GIT_CONFIG_* variables, safe for any driver name) that empties every filter driver."""
    drivers = sorted(
        {e.key.rsplit(".", 1)[0] for e in entries if e.key.startswith("filter.") and e.key.count(".") >= 2}
    )
    settings = [(f"{d}.{key}", "") for d in drivers for key in ("clean", "smudge", "process")]
    settings += [(f"{d}.required", "false") for d in drivers]
    env = {"GIT_CONFIG_COUNT": str(len(settings))}
    for index, (key, value) in enumerate(settings):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env
