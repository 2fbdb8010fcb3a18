"""Limits on model calls, shared by every process of the mesh: `ctx.llm` takes a grant from a
`mesh.coordination.limits.RateLimit` before each call.

- `MESH_LLM_RATE_LIMIT`: requests per interval, `N/T` with T in seconds (`60/60s`, `5/2s`,
  `60/1m`, `1000/1h`), for the configured model; or `model=N/T,model=N/T` per model.
- `MESH_LLM_TOKEN_LIMIT`: estimated prompt tokens (`mesh.llm.window.estimate_tokens`) per
  interval, in the same form.

Default: no limit. Each limit is the `mesh-limits` key `rate.llm-<model>` (requests) or
`rate.llm-tokens-<model>` (tokens), the model's name with any character other than letters,
digits, `-` and `_` turned into `_`: every process using that model name shares it, and
every process must use the same setting. A request larger than the whole token limit is
refused (`ConfigError`) rather than waited for for ever.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from mesh.errors import ConfigError

__all__ = ["CallQuota", "Rate", "limit_name", "parse_rate"]

_RATE = re.compile(r"\s*(\d[\d_]*)\s*/\s*(\d+(?:\.\d+)?)?\s*(ms|s|m|h)?\s*")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@dataclass(frozen=True)
class Rate:
    """At most ``limit`` units in any ``interval`` seconds."""

    limit: int
    interval: float

    def describe(self) -> str:
        return f"{self.limit}/{self.interval:g}s"


def parse_rate(text: str, setting: str) -> Rate:
    """`N/T` (T a number with `ms`, `s`, `m` or `h`; `60/m` is `60/1m`) as a Rate."""
    match = _RATE.fullmatch(text)
    if match is None or (match.group(2) is None and match.group(3) is None):
        raise ConfigError(f"{setting} is N/T, such as 60/60s, 5/2s or 1000/1h, not {text!r}")
    limit = int(match.group(1).replace("_", ""))
    interval = float(match.group(2) or 1) * _UNIT[match.group(3)]
    if not 1 <= limit <= 10**12 or not 0.01 <= interval <= 86_400:
        raise ConfigError(f"{setting} allows 1 to 10**12 units in 0.01 s to 1 day, not {text!r}")
    return Rate(limit, interval)


def _setting(environ: Mapping[str, str], setting: str, model: str) -> Rate | None:
    text = environ.get(setting, "").strip()
    if not text:
        return None
    if "=" not in text:
        return parse_rate(text, setting)
    found: dict[str, Rate] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{setting} entries are model=N/T, not {part!r}")
        found[name.strip()] = parse_rate(value, f"{setting} for {name.strip()}")
    return found.get(model)


def limit_name(prefix: str, model: str) -> str:
    """The `mesh-limits` name for ``model``: letters, digits, `-` and `_` only, at most 128."""
    return (prefix + re.sub(r"[^A-Za-z0-9_-]", "_", model))[:128]


@dataclass(frozen=True)
class CallQuota:
    """The request and token rates the settings give one model (None: no limit)."""

    requests: Rate | None = None
    tokens: Rate | None = None

    @classmethod
    def from_env(cls, model: str, environ: Mapping[str, str]) -> CallQuota:
        return cls(_setting(environ, "MESH_LLM_RATE_LIMIT", model), _setting(environ, "MESH_LLM_TOKEN_LIMIT", model))

    @property
    def limited(self) -> bool:
        return self.requests is not None or self.tokens is not None
