"""Keeping credentials out of logs and spans.

`scrub` replaces, in strings, dicts and lists: the values of keys that name a secret
(`api_key`, `Authorization`, `password`, `access_token`, ...), text that looks like a
credential (`sk-...` keys, `Bearer`/`Basic` headers, JWTs, NATS nkey seeds, private key
blocks, `user:password@` in URLs, `api_key=...` pairs), and the exact values of secret
environment variables of this process (`OPENAI_API_KEY`, `*_TOKEN`, `*_PASSWORD`, OTLP
headers...), whatever their format.

Every pattern takes time linear in the text: a pattern that scans a run of characters and then
backs off looking for what follows starts only where such a run starts (a look-behind), so a
client's 100 KB of `a-a-a-...` costs a scan, not one per position (it held an agent's event
loop for a minute: review T). Text of any size is scrubbed only as far as it is kept
(`scrub_start`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["REDACTED", "scrub", "scrub_start", "scrub_text", "is_secret_key", "remember_secrets_from_env"]

REDACTED = "[redacted]"

_SECRET_KEY = re.compile(
    r"api[_-]?key|apikey|authorization|password|passwd|passphrase|secret|credential|private[_-]?key"
    r"|nkey|cookie|jwt|(?:^|[_\-.])token$",
    re.I,
)
_SECRET_TEXT = re.compile(
    "|".join(
        (
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
            r"\bsk-[A-Za-z0-9_\-]{8,}",  # OpenAI, Anthropic and look-alike API keys
            r"\b(?:Bearer|Basic)\s+[A-Za-z0-9._~+/\-]{8,}=*",
            r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]*)?",  # JWTs, NATS user JWTs
            r"\bS[UAONCXP][A-Z2-7]{50,}",  # NATS nkey seeds
            r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key ids
            r"\bgh[pousr]_[A-Za-z0-9]{30,}",  # GitHub tokens
            r"\bxox[abprs]-[A-Za-z0-9\-]{10,}",  # Slack tokens
        )
    )
)
# a scheme of at most 32 characters, from any word boundary: linear (`...https://u:p@h` is
# scrubbed; an unbounded scheme scanned a run like `a-a-a-...` again from each boundary)
_URL_USERINFO = re.compile(r"\b([a-z][a-z0-9+.\-]{0,31}://)[^/\s@]+@", re.I)
_PAIR = re.compile(
    r"\b(api[_-]?key|apikey|access[_-]?token|auth[_-]?token|refresh[_-]?token|token|password|passwd|"
    r"client[_-]?secret|secret|authorization)([\"']?\s*[=:]\s*)"
    r"(\"[^\"]*\"|'[^']*'|(?:(?:Bearer|Basic|Token|Digest|Bot)\s+)?(?!\[redacted\])[^\s\"'&,;)}\]]+)",
    re.I,
)
_ENV_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|SEED", re.I)
_NOT_SECRET_ENV = {"OTEL_EXPORTER_OTLP_ENDPOINT", "OPENAI_BASE_URL", "NATS_KEY", "NATS_CREDS", "NATS_NKEY_SEED"}
_env_secrets: re.Pattern[str] | None = None


def remember_secrets_from_env(environ: Mapping[str, str] | None = None) -> None:
    """Learn the values of this process's secret variables (and OTLP header values), so that
    they are redacted verbatim wherever they show up. `configure_logging` calls this."""
    global _env_secrets
    environ = os.environ if environ is None else environ
    values: set[str] = set()
    for name, value in environ.items():
        if name.startswith("OTEL_") and name.endswith("_HEADERS"):
            values.update(part.partition("=")[2].strip() for part in value.split(","))
        elif _ENV_SECRET_NAME.search(name) and name not in _NOT_SECRET_ENV and not value.startswith(("/", ".")):
            values.add(value.strip())
    values = {v for v in values if len(v) >= 8}
    longest_first = sorted(values, key=len, reverse=True)
    _env_secrets = re.compile("|".join(map(re.escape, longest_first))) if longest_first else None


def is_secret_key(key: object) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.search(key))


def scrub_text(text: str) -> str:
    if _env_secrets is not None:
        text = _env_secrets.sub(REDACTED, text)
    text = _SECRET_TEXT.sub(REDACTED, text)
    text = _URL_USERINFO.sub(rf"\1{REDACTED}@", text)
    return _PAIR.sub(rf"\1\2{REDACTED}", text)


def scrub_start(text: str, limit: int) -> str:
    """The first ``limit`` characters of ``text``, scrubbed. Only the first twice ``limit`` are
    read, so text of any size costs no more than that, and a secret that starts within the
    limit is scrubbed whole if it ends within twice it."""
    return scrub_text(text[: 2 * limit])[:limit]


def scrub(value: Any) -> Any:
    """Replace anything that looks like a credential, in strings, dicts, lists and tuples."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return {k: REDACTED if is_secret_key(k) and v not in (None, "") else scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [scrub(v) for v in value]
    return value
