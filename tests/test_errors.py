"""`mesh.errors`: one root, retryable as a stated attribute, messages that say what to do."""

from __future__ import annotations

import asyncio
import inspect

import nats.errors
import pytest
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

import mesh.errors
from mesh.bus import jetstream
from mesh.errors import (
    ConfigError,
    ConflictError,
    ExpectedSequenceError,
    MeshError,
    NoServerError,
    RetryableError,
    SchemaError,
    SnapshotMismatch,
    TaskError,
    TaskTimeoutError,
    VersionConflict,
    retryable,
)

pytestmark = pytest.mark.unit

ERRORS = [c for _, c in inspect.getmembers(mesh.errors, inspect.isclass) if issubclass(c, BaseException)]


class TestHierarchy:
    def test_every_error_is_a_mesh_error_and_states_retryable(self) -> None:
        """Each error class in mesh.errors is a MeshError and sets `retryable` in its own body."""
        assert ERRORS and all(issubclass(c, MeshError) for c in ERRORS)
        assert [c.__name__ for c in ERRORS if "retryable" not in vars(c)] == []
        assert sorted(c.__name__ for c in ERRORS) == sorted(n for n in mesh.errors.__all__ if n != "retryable")

    def test_builtins_still_catch_them(self) -> None:
        """Callers catching a built-in keep working: ValueError, TimeoutError, ConnectionError."""
        assert issubclass(SnapshotMismatch, ValueError) and issubclass(ConfigError, ValueError)
        assert issubclass(TaskTimeoutError, TimeoutError) and issubclass(NoServerError, ConnectionError)
        assert issubclass(ExpectedSequenceError, ConflictError) and issubclass(VersionConflict, ConflictError)


class TestRetryable:
    def test_mesh_errors_say_so_themselves(self) -> None:
        """A mesh error is retried exactly when its `retryable` says so, whatever it also inherits."""
        assert retryable(RetryableError("429")) and retryable(TaskError("later", retryable=True))
        assert not retryable(TaskError("no")) and not retryable(SchemaError("bad"))
        assert not retryable(ExpectedSequenceError("mesh.x", 3)) and not retryable(ConfigError("x"))
        assert retryable(TaskTimeoutError("t", None, 1.0))

    def test_builtins(self) -> None:
        """Built-in timeouts and connection failures pass; anything else is a bug or bad input."""
        assert retryable(TimeoutError()) and retryable(asyncio.TimeoutError()) and retryable(ConnectionResetError())
        assert not retryable(ValueError("bug")) and not retryable(KeyError("k"))

    def test_nats_passing_errors_are_known_to_the_bus(self) -> None:
        """NATS's passing failures are `jetstream.is_transient`; other NATS errors are not."""
        for error in (nats.errors.NoRespondersError(), nats.errors.ConnectionClosedError(),
                      NoStreamResponseError(), ServiceUnavailableError()):  # fmt: skip
            assert jetstream.is_transient(error)
        assert not jetstream.is_transient(nats.errors.BadSubjectError()) and not jetstream.is_transient(ValueError())


class TestMessages:
    def test_task_timeout_names_what_it_has(self) -> None:
        """A task timeout names the task, the capability if known, the timeout, and what to do; never '?'."""
        known, unknown = str(TaskTimeoutError("t-1", "echo", 2.5)), str(TaskTimeoutError("t-1", None, 60))
        assert "t-1" in known and "'echo'" in known and "2.5s" in known and "60s" in unknown
        assert all("mesh status" in m and "--timeout" in m and "?" not in m for m in (known, unknown))

    def test_version_conflict_without_author(self) -> None:
        """A conflict on a key whose writer is unknown does not print '?' for it."""
        text = str(VersionConflict("plan", "k", 1, 2, seq=7))
        assert "expected version 1, found version 2 (last written at seq 7)" in text and "?" not in text
