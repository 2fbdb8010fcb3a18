"""The project's test policy; the fixtures (a real nats-server per test, the event log, agents as
OS processes or in-process, a scripted model) are the users' testing kit, `mesh.testing`."""

from __future__ import annotations

import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from mesh.testing import AgentProcesses

__all__ = ["ROOT", "AgentProcesses", "AgentStarter"]

pytest_plugins = ["mesh.testing"]

ROOT = Path(__file__).resolve().parent.parent

KINDS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test says what it needs, so `-m unit` (or integration, e2e) picks honestly: exactly
    one kind, and no `unit` test with a server nor a non-e2e test with agent processes."""
    wrong = [f"{item.nodeid}: {problem}" for item in items if (problem := kind_problem(item))]
    if wrong:
        raise pytest.UsageError("tests with a wrong kind marker (see pyproject.toml markers):\n  " + "\n  ".join(wrong))


def kind_problem(item: pytest.Item) -> str | None:
    kinds = {mark.name for mark in item.iter_markers() if mark.name in KINDS}
    fixtures = set(getattr(item, "fixturenames", ()))
    if len(kinds) != 1:
        return f"marked {sorted(kinds) or 'with none'} of {', '.join(KINDS)}; mark it with exactly one"
    if "agents" in fixtures and kinds != {"e2e"}:
        return "starts agent processes (the `agents` fixture), so it is e2e"
    if "nats_server" in fixtures and kinds == {"unit"}:
        return "starts a nats-server (the `nats_server` fixture), so it is not unit"
    if "scripted_model" in fixtures and kinds == {"unit"}:
        return "serves HTTP on loopback (the `scripted_model` fixture), so it is not unit"
    return None


AgentStarter = Callable[..., Awaitable[subprocess.Popen[bytes]]]
