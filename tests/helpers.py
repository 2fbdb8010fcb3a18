"""Test helpers that read the real log: the testing kit's, under the names the tests import."""

from __future__ import annotations

from mesh.testing import EventLog, eventually

__all__ = ["EventLog", "eventually"]
