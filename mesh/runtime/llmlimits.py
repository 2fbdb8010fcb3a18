"""`SharedCallLimits`: the `CallGate` an agent's `ctx.llm` waits at before each model call,
taking grants from the mesh-wide rate limits (`mesh.coordination.limits.RateLimit`) that
`MESH_LLM_RATE_LIMIT` and `MESH_LLM_TOKEN_LIMIT` configure (`mesh.llm.quota`). One per
process; a `RateLimit` object per limit name, made on first use (at most `MAX_LIMITS`)."""

from __future__ import annotations

import time

import structlog

from mesh.bus.client import Mesh
from mesh.coordination.limits import RateLimit
from mesh.errors import ConfigError
from mesh.llm.quota import CallQuota, Rate, limit_name

__all__ = ["MAX_LIMITS", "SharedCallLimits"]

MAX_LIMITS = 128  # RateLimit objects a process keeps (two per model name at most)
log = structlog.get_logger("mesh.llm")


class SharedCallLimits:
    """Takes a model call's grants: one request, then its estimated prompt tokens."""

    def __init__(self) -> None:
        self._limits: dict[str, tuple[Mesh, RateLimit]] = {}

    async def __call__(self, mesh: Mesh, model: str, quota: CallQuota, tokens: int) -> float:
        started = time.monotonic()
        if quota.requests is not None:
            grant = await self._limit(mesh, limit_name("llm-", model), quota.requests).acquire()
            log.debug("model call granted", limit=grant.limit, at_ms=grant.at)
        if quota.tokens is not None:
            if tokens > quota.tokens.limit:
                raise ConfigError(f"a call to {model} of about {tokens} tokens can never fit MESH_LLM_TOKEN_LIMIT "
                                  f"{quota.tokens.describe()}: raise the limit or shorten the request")  # fmt: skip
            grant = await self._limit(mesh, limit_name("llm-tokens-", model), quota.tokens).acquire(tokens)
            log.debug("model tokens granted", limit=grant.limit, at_ms=grant.at, units=grant.units)
        return time.monotonic() - started

    def _limit(self, mesh: Mesh, name: str, rate: Rate) -> RateLimit:
        held = self._limits.get(name)
        if held is None or held[0] is not mesh or (held[1].limit, held[1].interval) != (rate.limit, rate.interval):
            if len(self._limits) >= MAX_LIMITS:
                self._limits.clear()
            held = self._limits[name] = (mesh, RateLimit(mesh, name, limit=rate.limit, interval=rate.interval))
        return held[1]
