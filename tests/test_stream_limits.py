"""The MESH stream's limits and de-duplication window are settings with defaults, checked where they are read."""

from __future__ import annotations

import pytest

from mesh import ConfigError, Mesh
from mesh.bus.connection import StreamLimits
from topics import subjects


class TestFromEnv:
    pytestmark = pytest.mark.unit

    def test_defaults(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Unset variables give the documented defaults."""
        for name in ("MESH_DUPLICATE_WINDOW", "MESH_STREAM_MAX_AGE", "MESH_STREAM_MAX_BYTES", "MESH_STREAM_MAX_MSGS"):
            monkeypatch.delenv(name, raising=False)
        assert StreamLimits.from_env() == StreamLimits(600.0, 30 * 86400.0, 10 * 2**30, -1)

    @pytest.mark.parametrize(("name", "value"), [("MESH_DUPLICATE_WINDOW", "0"), ("MESH_STREAM_MAX_AGE", "-5"),
                                                 ("MESH_STREAM_MAX_BYTES", "lots"), ("MESH_STREAM_MAX_MSGS", "nan"),
                                                 ("MESH_STREAM_MAX_AGE", "inf")])  # fmt: skip
    def test_a_bad_value_is_a_clear_error(self, monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
        """A value that cannot work names the variable and what it takes."""
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError, match=name):
            StreamLimits.from_env()


class TestOnTheServer:
    pytestmark = pytest.mark.integration

    async def test_the_stream_is_created_with_the_settings(self, nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """The first client to connect creates MESH with the limits from the environment."""
        monkeypatch.setenv("MESH_STREAM_MAX_AGE", "3600")
        monkeypatch.setenv("MESH_STREAM_MAX_MSGS", "1000000")
        monkeypatch.setenv("MESH_DUPLICATE_WINDOW", "120")
        async with await Mesh.connect(nats_url) as mesh:
            config = (await mesh.js.stream_info(subjects.STREAM)).config
        assert (config.max_age, config.max_msgs, config.duplicate_window) == (3600, 1_000_000, 120)
        assert config.max_bytes == 10 * 2**30
