"""What an operator's settings and commands may do to the server and the host (review P):
refusals said in one line, and one server per store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mesh.bus.processes import pid_alive, stop_pid
from mesh.bus.server import stop_server
from mesh.errors import ConfigError

pytestmark = pytest.mark.integration


async def test_a_stream_the_server_refuses_is_a_clear_error(nats_server: Any) -> None:
    """`MESH_REPLICAS=3` on one server ended in the server's traceback (review P)."""
    import nats

    from mesh.bus.connection import ensure_stream

    nc = await nats.connect(nats_server.url)
    try:
        with pytest.raises(ConfigError, match=r"refused to create the MESH stream .*MESH_REPLICAS \(above 1 needs a cluster\)"):
            await ensure_stream(nc.jetstream(), replicas=3)
    finally:
        await nc.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # `up` leaves its server running
def test_mesh_up_at_once_starts_one_server(tmp_path: Path) -> None:  # detached, as `mesh up` does: its Popen warns
    """Two `mesh up` at the same moment each started a nats-server on one store, and `mesh
    down` stopped only the last (review P). One starts; the others find it."""
    import threading

    from mesh.bus.server import up

    home = tmp_path / ".mesh"
    barrier, results = threading.Barrier(3), []

    def start() -> None:
        barrier.wait()
        results.append(up(home, port=0))

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert sorted(new for _, new in results) == [False, False, True]
        assert len({record.pid for record, _ in results}) == 1
    finally:
        stop_server(home, timeout=10)
        for pid in {record.pid for record, _ in results}:  # any server left (the bug): not left running
            if pid_alive(pid):
                stop_pid(pid, 10)


def test_what_the_system_refuses_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `.mesh/store` that is a file made `mesh up` end in a traceback (review P)."""
    from click.testing import CliRunner

    from mesh.cli.main import main

    (tmp_path / ".mesh").mkdir()
    (tmp_path / ".mesh" / "store").write_text("")
    monkeypatch.setenv("MESH_HOME", str(tmp_path / ".mesh"))
    result = CliRunner().invoke(main, ["up", "--port", "0"])
    assert result.exit_code == 1 and "error: [Errno 17] File exists" in result.output, result.output
    assert "Traceback" not in result.output


def test_exports_and_pages_are_for_their_writer_only(tmp_path: Path) -> None:
    """An export holds every user's task inputs, outputs and model calls, which the server's
    permissions hide from other roles; it was written with the umask's mode, 0644 (review P)."""
    import os
    import stat

    from mesh.cli.options import write_text
    from replay.export import write_lines

    old = os.umask(0o022)
    try:
        write_lines(tmp_path / "log.jsonl", [(1, "mesh.x.y", b'{"id": "e-1"}')])
        write_text(tmp_path / "timeline.html", "<html></html>")
    finally:
        os.umask(old)
    for name in ("log.jsonl", "timeline.html"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
