"""Processes on POSIX and on Windows: the one module that knows how the two differ.

- a program's file name (`.exe` on Windows);
- starting a child so that it can be asked to stop (POSIX: SIGTERM reaches any child, and a
  detached one gets its own session; Windows: its own process group, the only thing
  CTRL_BREAK_EVENT can be sent to, and no console when detached), and, for a supervisor that
  alone decides when its children stop (`mesh run`), out of reach of the terminal's Ctrl-C
  (POSIX: a process group of its own; Windows: its own group already is);
- asking a child to stop (SIGTERM / CTRL_BREAK_EVENT), and stopping a process known only by its
  pid (`mesh down`: Windows has no signal for a process of another console, so it is terminated);
- whether a pid lives (`os.kill(pid, 0)` would send CTRL_C_EVENT on Windows);
- the stop signals an agent drains on, delivered to its event loop even where
  `loop.add_signal_handler` is not implemented (Windows' proactor loop), and, for a supervisor,
  the terminal's hang-up (POSIX SIGHUP).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["SUPERVISOR_PID", "WINDOWS", "executable", "child_options", "ask_to_stop", "stop_pid", "pid_alive", "stop_signals",
           "on_stop_signals", "on_each_stop_signal"]  # fmt: skip

WINDOWS = sys.platform == "win32"
SUPERVISOR_PID = "MESH_SUPERVISOR_PID"  # what `mesh run` tells its replicas it is: they stop once it is gone

# Win32 values (the stdlib names them on Windows only); named here so each branch can be tested anywhere.
CREATE_NEW_PROCESS_GROUP = 0x00000200
DETACHED_PROCESS = 0x00000008
CTRL_BREAK_EVENT = 1
SIGBREAK = 21
_PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
_STILL_ACTIVE = 259


def executable(name: str) -> str:
    """A program's file name: `nats-server.exe` on Windows."""
    return f"{name}.exe" if WINDOWS else name


def child_options(*, detach: bool, own_group: bool = False) -> dict[str, Any]:
    """`subprocess.Popen` (and `asyncio.create_subprocess_exec`) keywords for a child that
    `ask_to_stop` can reach; `detach`: it outlives this command and its terminal (`mesh up`);
    `own_group`: the terminal's Ctrl-C reaches this process and not the child, which stops when
    this process asks it to (`mesh run`). On Windows every child has its own group already."""
    if WINDOWS:
        return {"creationflags": CREATE_NEW_PROCESS_GROUP | (DETACHED_PROCESS if detach else 0)}
    if own_group and not detach:
        return {"start_new_session": False, "process_group": 0}
    return {"start_new_session": detach}


class Stoppable(Protocol):
    """What `ask_to_stop` uses of a child: `subprocess.Popen` and `asyncio.subprocess.Process` have it."""

    def send_signal(self, sig: int, /) -> None: ...

    def terminate(self) -> None: ...


def ask_to_stop(process: Stoppable) -> bool:
    """SIGTERM, or CTRL_BREAK_EVENT on Windows (to a child started with `child_options`).
    Where the child cannot be asked (Windows, no shared console), it is terminated: False."""
    if not WINDOWS:
        process.send_signal(signal.SIGTERM)
        return True
    try:
        process.send_signal(CTRL_BREAK_EVENT)
        return True
    except OSError:  # a detached child has no console to send the event through
        process.terminate()
        return False


def stop_pid(pid: int, timeout: float) -> str | None:
    """Stop the process `pid`, which need not be our child: SIGTERM, then SIGKILL after
    `timeout`. Returns None if it stopped when asked, else one line saying what happened.
    ValueError for a pid that is not one process's (1 or below: -1 signals every process)."""
    if pid <= 1:
        raise ValueError(f"pid {pid} is not one process's: nothing was signalled")
    if WINDOWS:
        os.kill(pid, signal.SIGTERM)  # TerminateProcess: nothing gentler reaches another console
        _wait_gone(pid, timeout)
        return "Windows cannot ask a process of another console to stop: it was terminated"
    if sys.platform == "win32":  # not reached (WINDOWS returned above); tells mypy the rest is POSIX
        raise NotImplementedError("a POSIX call")
    os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, timeout):
        return None
    os.kill(pid, signal.SIGKILL)
    return f"it did not stop within {timeout:g}s of SIGTERM and was killed"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)  # waiting for another process to exit
    return True


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (and, on POSIX, may be signalled by us); reaps it if it is our exited child.
    False for a pid that is not one process's (1 or below)."""
    if pid <= 1:
        return False
    if WINDOWS:
        return _windows_pid_alive(pid)
    if sys.platform == "win32":  # not reached (WINDOWS returned above); tells mypy the rest is POSIX
        raise NotImplementedError("a POSIX call")
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child that exited: reap it
            return False
    except ChildProcessError:
        pass  # not our child
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _windows_pid_alive(pid: int) -> bool:
    """OpenProcess and GetExitCodeProcess, through ctypes (no dependency)."""
    if sys.platform != "win32":
        raise NotImplementedError("OpenProcess is a Windows call")
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
    kernel32.GetExitCodeProcess.argtypes = (wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD))
    kernel32.CloseHandle.argtypes = (wintypes.HANDLE,)
    handle = kernel32.OpenProcess(_PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:
        return False
    try:
        code = wintypes.DWORD()
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == _STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def stop_signals() -> tuple[int, ...]:
    """SIGTERM and SIGINT (Ctrl-C); on Windows also SIGBREAK, which CTRL_BREAK_EVENT raises."""
    return (signal.SIGTERM, signal.SIGINT, SIGBREAK) if WINDOWS else (signal.SIGTERM, signal.SIGINT)


def on_stop_signals(callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` in the running loop on each stop signal; returns the function that
    puts the previous handlers back. Where the loop cannot watch signals (Windows), a
    `signal.signal` handler hands the call to the loop."""
    return on_each_stop_signal(lambda _: callback())


def on_each_stop_signal(callback: Callable[[int], None], *, hangup: bool = False) -> Callable[[], None]:
    """`on_stop_signals` with the signal's number passed to `callback`; `hangup`: on POSIX,
    SIGHUP too (the terminal closed), for a process whose children only stop when it asks them."""
    loop = asyncio.get_running_loop()
    undo: list[Callable[[], object]] = []
    signums = stop_signals()
    if hangup and not WINDOWS and sys.platform != "win32":  # (the second test tells mypy SIGHUP exists)
        signums += (signal.SIGHUP,)
    for signum in signums:
        try:
            loop.add_signal_handler(signum, callback, signum)
            undo.append(functools.partial(loop.remove_signal_handler, signum))
        except NotImplementedError:
            previous = signal.signal(signum, lambda number, _: loop.call_soon_threadsafe(callback, number))
            undo.append(functools.partial(signal.signal, signum, previous or signal.SIG_DFL))

    def restore() -> None:
        for step in undo:
            step()

    return restore
