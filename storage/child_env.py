"""The environment of storage's child processes (the Oxen writer, an export's commit): only what they use.

The bot's own environment holds secrets a child never needs (`DISCORD_TOKEN`, `REFINERY_EXPORT_KEY`);
a child that crashes, logs its environment or runs Oxen's native code must not have them to leak.
So the environment is an allow-list, never the parent's minus a deny-list: a secret added to the bot
later stays out by default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# Process basics, locale, Python, proxies and CA bundles (a push to an Oxen remote goes through them).
ALLOWED = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "SYSTEMROOT",
    "VIRTUAL_ENV", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "RUST_LOG", "RUST_BACKTRACE",
    "OXEN_AUTH_TOKEN",  # the writer pushes to `storage.oxen_remote` with it
    "OXEN_CONFIG_DIR",  # the commit identity
})
ALLOWED_PREFIXES = ("LC_", "PYTHON", "COVERAGE_")


def child_environment(parent: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The allowed part of `parent` (default: this process's environment), plus `extra`."""
    source = os.environ if parent is None else parent
    kept = {k: v for k, v in source.items() if k in ALLOWED or k.startswith(ALLOWED_PREFIXES)}
    return kept | extra
