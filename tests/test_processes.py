"""The POSIX/Windows differences of `mesh.bus.processes`: each platform's choice, real signals
and a real nats-server on this machine. The Windows branches are checked as choices (which flag,
which event, what happens when the event cannot be sent); their Win32 calls run on Windows only."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.bus import processes
from mesh.bus.processes import (
    CREATE_NEW_PROCESS_GROUP,
    CTRL_BREAK_EVENT,
    DETACHED_PROCESS,
    SIGBREAK,
    ask_to_stop,
    child_options,
    executable,
    on_each_stop_signal,
    on_stop_signals,
    pid_alive,
    stop_pid,
    stop_signals,
)
from mesh.bus.server import start_server


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes, "WINDOWS", True)


@pytest.fixture
def posix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes, "WINDOWS", False)


class FakeChild:
    """A Popen's signalling surface, recording what it was sent."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.sent: list[int] = []
        self.terminated = False

    def send_signal(self, signum: int) -> None:
        if self.refuse:
            raise OSError("The handle is invalid")
        self.sent.append(signum)

    def terminate(self) -> None:
        self.terminated = True


@pytest.mark.unit
class TestExecutable:
    def test_exe_on_windows_only(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The wheel installs `nats-server.exe` on Windows, `nats-server` elsewhere."""
        monkeypatch.setattr(processes, "WINDOWS", True)
        assert executable("nats-server") == "nats-server.exe"
        monkeypatch.setattr(processes, "WINDOWS", False)
        assert executable("nats-server") == "nats-server"


@pytest.mark.unit
class TestChildOptions:
    def test_posix_detaches_into_its_own_session(self, posix: None) -> None:
        """POSIX: a detached child gets a new session (no terminal signals); an attached one does not."""
        assert child_options(detach=True) == {"start_new_session": True}
        assert child_options(detach=False) == {"start_new_session": False}

    def test_posix_own_group_keeps_the_terminals_ctrl_c_away(self, posix: None) -> None:
        """POSIX, `own_group` (`mesh run`'s replicas): a process group of its own in the same session;
        detached already has one."""
        assert child_options(detach=False, own_group=True) == {"start_new_session": False, "process_group": 0}
        assert child_options(detach=True, own_group=True) == {"start_new_session": True}

    def test_windows_always_gets_its_own_process_group(self, windows: None) -> None:
        """Windows: every child has its own process group (CTRL_BREAK_EVENT's target); detached: no console."""
        assert child_options(detach=False) == {"creationflags": CREATE_NEW_PROCESS_GROUP}
        assert child_options(detach=True) == {"creationflags": CREATE_NEW_PROCESS_GROUP | DETACHED_PROCESS}
        assert child_options(detach=False, own_group=True) == {"creationflags": CREATE_NEW_PROCESS_GROUP}

    @pytest.mark.skipif(sys.platform != "win32", reason="the stdlib names the Win32 flags on Windows only")
    def test_the_win32_values_are_the_stdlibs(self) -> None:
        """The flags named here are the ones subprocess and signal define on Windows."""
        assert (CREATE_NEW_PROCESS_GROUP, DETACHED_PROCESS) == (subprocess.CREATE_NEW_PROCESS_GROUP, subprocess.DETACHED_PROCESS)
        assert (CTRL_BREAK_EVENT, SIGBREAK) == (signal.CTRL_BREAK_EVENT, signal.SIGBREAK)


@pytest.mark.unit
class TestAskToStop:
    def test_posix_sends_sigterm(self, posix: None) -> None:
        """POSIX: SIGTERM, which an agent drains on."""
        child = FakeChild()
        assert ask_to_stop(child) is True  # type: ignore[arg-type]
        assert child.sent == [signal.SIGTERM]

    def test_windows_sends_ctrl_break(self, windows: None) -> None:
        """Windows: CTRL_BREAK_EVENT to the child's process group, which Python raises as SIGBREAK."""
        child = FakeChild()
        assert ask_to_stop(child) is True  # type: ignore[arg-type]
        assert child.sent == [CTRL_BREAK_EVENT]

    def test_windows_terminates_a_child_it_cannot_reach(self, windows: None) -> None:
        """Windows, a child without our console: terminated, and the caller is told so."""
        child = FakeChild(refuse=True)
        assert ask_to_stop(child) is False  # type: ignore[arg-type]
        assert child.terminated


@pytest.mark.unit
class TestStopSignals:
    def test_posix_drains_on_sigterm_and_sigint(self, posix: None) -> None:
        """POSIX: SIGTERM and SIGINT."""
        assert stop_signals() == (signal.SIGTERM, signal.SIGINT)

    def test_windows_also_drains_on_sigbreak(self, windows: None) -> None:
        """Windows: Ctrl-Break (SIGBREAK) as well, the one event a parent can send."""
        assert stop_signals() == (signal.SIGTERM, signal.SIGINT, SIGBREAK)

    @pytest.mark.parametrize("loop_watches_signals", [True, False], ids=["add_signal_handler", "signal.signal"])
    async def test_a_signal_reaches_the_loop_and_undo_restores(
        self, posix: None, loop_watches_signals: bool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A real SIGINT calls back in the loop, whether the loop watches signals or (as on
        Windows) it cannot and `signal.signal` hands over; undoing takes our handler away."""
        loop = asyncio.get_running_loop()
        if not loop_watches_signals:

            def not_implemented(*_: object) -> None:
                raise NotImplementedError

            monkeypatch.setattr(loop, "add_signal_handler", not_implemented)
        before = signal.getsignal(signal.SIGINT)
        stopped = asyncio.Event()
        restore = on_stop_signals(stopped.set)
        try:
            signal.raise_signal(signal.SIGINT)
            await asyncio.wait_for(stopped.wait(), 5)
        finally:
            restore()
        # asyncio's remove_signal_handler puts back Python's own SIGINT handler; the fallback, the one it replaced
        assert signal.getsignal(signal.SIGINT) == (signal.default_int_handler if loop_watches_signals else before)


    async def test_each_signal_is_named_and_hangup_is_one_on_request(self, posix: None) -> None:
        """`on_each_stop_signal` passes the signal on; with `hangup`, SIGHUP stops too (a supervisor's terminal closed)."""
        got: list[int] = []
        arrived = asyncio.Event()

        def note(signum: int) -> None:
            got.append(signum)
            arrived.set()

        restore = on_each_stop_signal(note, hangup=True)
        try:
            for signum in (signal.SIGTERM, signal.SIGHUP):
                arrived.clear()
                signal.raise_signal(signum)
                await asyncio.wait_for(arrived.wait(), 5)
        finally:
            restore()
        assert got == [signal.SIGTERM, signal.SIGHUP]
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL


@pytest.mark.unit
class TestStopPidOnWindows:
    def test_terminates_and_says_so(self, windows: None, monkeypatch: pytest.MonkeyPatch) -> None:
        """Windows: `mesh down` can only terminate the server, and returns the line that says so."""
        killed: list[tuple[int, int]] = []
        monkeypatch.setattr(processes.os, "kill", lambda pid, signum: killed.append((pid, signum)))
        monkeypatch.setattr(processes, "_windows_pid_alive", lambda pid: False)
        note = stop_pid(4321, timeout=1)
        assert killed == [(4321, signal.SIGTERM)]  # os.kill on Windows is TerminateProcess
        assert note is not None and "terminated" in note


@pytest.mark.integration
class TestRealServerProcess:
    def test_alive_until_stopped_when_asked(self, posix: None, tmp_path: Path) -> None:
        """A nats-server lives, stops on SIGTERM within the timeout (no note), and is then gone."""
        server = start_server(tmp_path / "store", port=-1, detach=True)
        try:
            assert pid_alive(server.process.pid)
            assert stop_pid(server.process.pid, timeout=10) is None
            assert not pid_alive(server.process.pid)
        finally:
            server.stop()

    def test_killed_when_it_does_not_stop_and_says_so(self, posix: None, tmp_path: Path) -> None:
        """A nats-server that cannot act on SIGTERM (stopped with SIGSTOP) is killed after the timeout, with a note."""
        server = start_server(tmp_path / "store", port=-1)
        try:
            os.kill(server.process.pid, signal.SIGSTOP)
            note = stop_pid(server.process.pid, timeout=0.5)
            assert note == "it did not stop within 0.5s of SIGTERM and was killed"
            assert server.process.wait(10) == -signal.SIGKILL
        finally:
            server.stop()

    def test_local_server_stop_asks_first(self, tmp_path: Path) -> None:
        """`LocalServer.stop` asks (SIGTERM here), so nats-server exits by itself with status 0."""
        server = start_server(tmp_path / "store", port=-1)
        server.stop()
        assert server.process.returncode == 0
