"""The policy listener on a UNIX-domain socket (``listen = "unix:/path"``, rspamd_regcheck/_unixsock.py).

The configuration keys from a table; the socket file's life (a stale one
replaced, anything else refused and left alone, mode and group, removal) on
real sockets in-process; then the real worker, whose supervisor binds the
socket once for all its worker processes, answering Postfix's protocol over
it.  Postfix itself on a UNIX socket is in tests/test_postfix.py.
"""

from __future__ import annotations

import grp
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_policy_server import HOSTILE, REG, REJECT_TEXT, REJECTED, ask, request

from rspamd_regcheck._unixsock import DEFAULT_MODE, UnixAddress, UnixListener
from rspamd_regcheck.config import config_from_mapping
from rspamd_regcheck.errors import ConfigError, ListenError

from conftest import free_port
from rspamd_procs import Proc, start_worker

START_TIMEOUT = 20.0  # seconds for a worker's socket to answer; well under one on an idle machine
GROUP = "postfix" if shutil.which("postfix") else grp.getgrgid(os.getgid()).gr_name  # a group that exists


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (a UNIX socket's path is at most 107 bytes; pytest's are long)."""
    d = Path(tempfile.mkdtemp(prefix="rc-unix-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- configuration ----------------------------------------------------------------------------

LONGEST = "/" + "p" * 106  # 107 bytes: the most sun_path takes with its NUL


GOOD_CONFIG = [
    pytest.param({"listen": "unix:/run/rc/policy.sock"}, UnixAddress("/run/rc/policy.sock"), 0o666, None, id="unix"),
    pytest.param({"listen": "unix:" + LONGEST}, UnixAddress(LONGEST), 0o666, None, id="longest-path"),
    pytest.param({"listen": "unix:/r/p", "socket_mode": "0660"}, UnixAddress("/r/p"), 0o660, None, id="mode"),
    pytest.param({"listen": "unix:/r/p", "socket_mode": "600"}, UnixAddress("/r/p"), 0o600, None, id="mode-3-digits"),
    pytest.param({"listen": "unix:/r/p", "socket_group": GROUP}, UnixAddress("/r/p"), 0o666, GROUP, id="group"),
    # the listener switched off, its socket's settings kept for when it is on again
    pytest.param({"listen": "", "socket_mode": "0600"}, None, 0o600, None, id="off-with-mode"),
    pytest.param({"listen": "127.0.0.1:10040"}, ("127.0.0.1", 10040), 0o666, None, id="tcp-as-before"),
]


@pytest.mark.parametrize(("table", "listen", "mode", "group"), GOOD_CONFIG)
def test_config_reads_and_writes_back(table: dict[str, str], listen: object, mode: int, group: str | None) -> None:
    ps = config_from_mapping({"policy_server": table}).policy_server
    assert (ps.listen, ps.socket_mode, ps.socket_group) == (listen, mode, group)
    written = config_from_mapping({"policy_server": table}).to_toml()
    assert config_from_mapping(tomllib.loads(written)).policy_server == ps  # `config check` round trip
    if isinstance(listen, UnixAddress):
        assert f'listen = "unix:{listen.path}"' in written


BAD_CONFIG = [
    pytest.param({"listen": "unix:"}, "policy_server.listen", "has no path", id="empty-path"),
    pytest.param({"listen": "unix:private/policy"}, "policy_server.listen", "relative path", id="relative"),
    pytest.param({"listen": "unix:/run/a\0b"}, "policy_server.listen", "NUL", id="nul"),
    pytest.param({"listen": "unix:/run/a\nb"}, "policy_server.listen", "control character", id="newline"),
    pytest.param({"listen": "unix:/run/rc/"}, "policy_server.listen", "names a directory", id="directory"),
    pytest.param({"listen": "unix:" + LONGEST + "p"}, "policy_server.listen", "at most 107", id="too-long"),
    pytest.param(
        {"listen": "unix:/" + "\u00e9" * 54}, "policy_server.listen", "109 bytes long", id="too-long-in-bytes"
    ),
    pytest.param({"listen": "unix:/r/p", "socket_mode": "rw-rw-rw-"}, "policy_server.socket_mode", "octal", id="mode"),
    pytest.param({"listen": "unix:/r/p", "socket_mode": "0888"}, "policy_server.socket_mode", "octal", id="not-octal"),
    pytest.param({"listen": "unix:/r/p", "socket_mode": "4777"}, "policy_server.socket_mode", "octal", id="setuid"),
    pytest.param({"listen": "unix:/r/p", "socket_mode": 438}, "policy_server.socket_mode", "string", id="a-number"),
    pytest.param(
        {"listen": "unix:/r/p", "socket_group": "no-such-group-here"},
        "policy_server.socket_group",
        "no group 'no-such-group-here'",
        id="unknown-group",
    ),
    pytest.param(
        {"listen": "127.0.0.1:10040", "socket_mode": "0600"},
        "policy_server.socket_mode",
        "UNIX socket only",
        id="mode-with-tcp",
    ),
    pytest.param(
        {"listen": "127.0.0.1:10040", "socket_group": GROUP},
        "policy_server.socket_group",
        "UNIX socket only",
        id="group-with-tcp",
    ),
]


@pytest.mark.parametrize(("table", "key", "why"), BAD_CONFIG)
def test_config_errors_name_the_key(table: dict[str, object], key: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"policy_server": table})
    assert info.value.key == key
    assert why in info.value.why


# -- the socket file, in-process ----------------------------------------------------------------


def _stale(path: Path) -> None:
    """A socket file nobody listens on, as a worker killed with SIGKILL leaves it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()


def _listening(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(1)
    return s


def test_a_stale_socket_is_replaced(short_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = short_dir / "p.sock"
    _stale(path)
    with socket.socket(socket.AF_UNIX) as s, pytest.raises(ConnectionRefusedError):
        s.connect(str(path))
    listener = UnixListener.bind(UnixAddress(str(path)), DEFAULT_MODE, None)
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))  # a socket that listens, where the stale one refused
        assert f"removed the stale socket {path}" in caplog.text
    finally:
        listener.close()


FOUND = [
    pytest.param("file", "the path exists and is not a socket (left as it is)", id="regular-file"),
    pytest.param("dir", "the path exists and is not a socket (left as it is)", id="directory"),
    pytest.param("symlink", "the path exists and is not a socket (left as it is)", id="symlink-to-a-socket"),
    pytest.param("listening", "in use: a process listens on it", id="in-use"),
    pytest.param("no-dir", "its directory does not exist", id="no-directory"),
]


@pytest.mark.parametrize(("found", "why"), FOUND)
def test_what_is_at_the_path_is_refused_and_left_intact(short_dir: Path, found: str, why: str) -> None:
    path = short_dir / "p.sock"
    live = None
    if found == "file":
        path.write_text("an admin's file\n")
    elif found == "dir":
        path.mkdir()
        (path / "inside").write_text("x")
    elif found == "symlink":  # a link is not followed, even to a stale socket: it is not ours to remove
        _stale(short_dir / "target.sock")
        path.symlink_to(short_dir / "target.sock")
    elif found == "listening":
        live = _listening(path)
    else:
        path = short_dir / "missing" / "p.sock"
    try:
        with pytest.raises(ListenError) as info:
            UnixListener.bind(UnixAddress(str(path)), DEFAULT_MODE, None)
        assert str(info.value) == f"cannot listen on unix:{path}: {why}"
        if found == "file":
            assert path.read_text() == "an admin's file\n"
        elif found == "dir":
            assert (path / "inside").read_text() == "x"
        elif found == "symlink":
            assert path.is_symlink() and (short_dir / "target.sock").is_socket()
        elif live is not None:
            assert path.is_socket()
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))  # the other process keeps it
    finally:
        if live is not None:
            live.close()


MODES = [
    pytest.param(DEFAULT_MODE, None, id="default-0666"),
    pytest.param(0o600, None, id="0600"),
    pytest.param(0o660, GROUP, id="0660-with-group"),
]


@pytest.mark.parametrize(("mode", "group"), MODES)
def test_mode_and_group_applied_whatever_the_umask(short_dir: Path, mode: int, group: str | None) -> None:
    path = short_dir / "p.sock"
    old = os.umask(0o077)  # the umask would give 0600 (or less) on its own
    try:
        listener = UnixListener.bind(UnixAddress(str(path)), mode, group)
    finally:
        os.umask(old)
    try:
        st = path.stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == mode
        assert st.st_gid == (os.getgid() if group is None else grp.getgrnam(group).gr_gid)
    finally:
        listener.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_a_group_the_user_is_not_in_stops_the_start(short_dir: Path) -> None:
    """chown(2) to a group the worker's user is not a member of: refused, no socket file left behind."""
    short_dir.chmod(0o777)
    path = short_dir / "p.sock"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child becomes nobody, who is not in GROUP
        code = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                UnixListener.bind(UnixAddress(str(path)), 0o660, GROUP).close()
                os.write(write, b"bound")
            except ListenError as exc:
                os.write(write, str(exc).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        said = fh.read().decode()
    assert os.waitpid(pid, 0)[1] == 0
    assert said == f"cannot listen on unix:{path}: Operation not permitted (giving it mode 0660, group {GROUP})"
    assert not path.exists()


def test_close_removes_only_its_own_file(short_dir: Path) -> None:
    path = short_dir / "p.sock"
    UnixListener.bind(UnixAddress(str(path)), DEFAULT_MODE, None).close()
    assert not path.exists()
    listener = UnixListener.bind(UnixAddress(str(path)), DEFAULT_MODE, None)
    path.unlink()  # an admin (or a newer worker) put something else there meanwhile
    path.write_text("not ours\n")
    listener.close()
    assert path.read_text() == "not ours\n"


# -- the real worker ----------------------------------------------------------------------------


def unix_config(knot, path: Path, extra: str = "") -> str:  # type: ignore[no-untyped-def]
    return (
        f'[server]\nworkers = 2\n[registry]\nzones = ["{REG}"]\n'
        f'[dns]\nnameservers = ["{knot.host}"]\nport = {knot.port}\n'
        "[policy]\nlocal_networks = []\n"
        f'[policy_server]\nlisten = "unix:{path}"\nmode = "enforce"\n{extra}'
    )


def wait_socket(path: Path, proc: Proc) -> None:
    """Wait until the worker answers a policy request at *path*, or fail with its log."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"exited ({proc.proc.returncode}): {proc.log_path.read_text(errors='replace')[-2000:]}")
        try:
            with connect(path) as s:
                ask(s, b"request=smtpd_access_policy\nprotocol_state=CONNECT\n\n")
                return
        except (OSError, AssertionError):
            time.sleep(0.05)
    raise RuntimeError(f"nothing answers at {path} after {START_TIMEOUT} s: {proc.log_path.read_text()[-2000:]}")


def connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(path))
    return s


class UnixWorker:
    """`rspamd-regcheck serve` with two worker processes and the policy listener at *path*."""

    def __init__(self, base: Path, knot, path: Path, extra: str = ""):  # type: ignore[no-untyped-def]
        self.path = path
        self.proc = start_worker(base, f"unix-{free_port()}", unix_config(knot, path, extra), free_port())
        wait_socket(path, self.proc)

    def pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"started worker (\d+)", self.proc.log_path.read_text())]

    def pid_that_answered(self, qid: str) -> int:
        """The worker process whose check log line carries queue id *qid* (written in batches)."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            found = re.search(rf"pid=(\d+) info event=check qid={qid} ", self.proc.log_path.read_text())
            if found:
                return int(found.group(1))
            time.sleep(0.1)
        raise AssertionError(f"no check logged for {qid}")


@pytest.fixture(scope="module")
def unix_worker(knot, tmp_path_factory) -> Iterator[UnixWorker]:  # type: ignore[no-untyped-def]
    d = Path(tempfile.mkdtemp(prefix="rc-unix-"))
    extra = f'socket_mode = "0660"\nsocket_group = "{GROUP}"\n'
    # clients names IP networks: it does not apply to a UNIX socket's peers (no address to match)
    extra += 'clients = ["192.0.2.0/24"]\n'
    w = UnixWorker(tmp_path_factory.mktemp("unix"), knot, d / "policy.sock", extra)
    try:
        yield w
    finally:
        w.proc.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_reject_case_answered_over_the_socket(unix_worker: UnixWorker) -> None:
    """The seed's REJECT case, refused with the worker's text; policy_server.clients (192.0.2.0/24
    here) keeps no UNIX peer out: the socket file's permissions decide who reaches it."""
    with connect(unix_worker.path) as s:
        assert ask(s, request(**REJECTED, instance="u1", recipient="user@dest.test")) == [REJECT_TEXT]
        # the connection stays open for the next transaction, as over TCP
        assert ask(s, request(**REJECTED, instance="u2", recipient="user@dest.test")) == [REJECT_TEXT]


def test_the_socket_has_its_mode_and_group(unix_worker: UnixWorker) -> None:
    st = unix_worker.path.stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == grp.getgrnam(GROUP).gr_gid
    assert f"Postfix policy service on unix:{unix_worker.path}" in unix_worker.proc.log_path.read_text()


def test_both_worker_processes_serve_the_one_socket(unix_worker: UnixWorker) -> None:
    """With one worker process stopped (SIGSTOP), the other answers; then the other way round."""
    pids = unix_worker.pids()
    assert len(pids) == 2, pids
    answered = []
    for n, stopped in enumerate(pids):
        os.kill(stopped, signal.SIGSTOP)
        try:
            qid = f"UNIXW{n}{os.urandom(3).hex().upper()}"
            with connect(unix_worker.path) as s:
                txn = {**REJECTED, "instance": qid, "queue_id": qid, "recipient": "u@d.test"}
                assert ask(s, request(**txn)) == [REJECT_TEXT]
        finally:
            os.kill(stopped, signal.SIGCONT)
        answered.append(unix_worker.pid_that_answered(qid))
    assert answered == [pids[1], pids[0]]


def test_a_restarted_worker_process_serves_the_socket(knot, tmp_path, short_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """The supervisor keeps the listening socket: a worker started in place of a dead one accepts on it."""
    w = UnixWorker(tmp_path, knot, short_dir / "policy.sock")
    try:
        dead, survivor = w.pids()
        os.kill(dead, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while len(w.pids()) < 3:
            assert time.monotonic() < deadline, w.proc.log_path.read_text()
            time.sleep(0.1)
        replacement = w.pids()[2]
        os.kill(survivor, signal.SIGSTOP)  # only the replacement can answer now
        try:
            qid = "UNIXR" + os.urandom(3).hex().upper()
            with connect(w.path) as s:
                assert ask(s, request(**REJECTED, instance=qid, queue_id=qid, recipient="u@d.test")) == [REJECT_TEXT]
        finally:
            os.kill(survivor, signal.SIGCONT)
        assert w.pid_that_answered(qid) == replacement
    finally:
        w.proc.stop()


@pytest.mark.parametrize(("attack", "expected"), HOSTILE)
def test_hostile_requests_over_the_socket(unix_worker: UnixWorker, attack: bytes, expected: str) -> None:
    with connect(unix_worker.path) as s:
        answer = ask(s, attack)
        after = ask(s, request(**REJECTED, instance="unix-after-" + str(len(attack)), recipient="u@d.test"))
    assert answer == [expected]
    assert after == [REJECT_TEXT]


def test_stale_socket_replaced_and_file_removed_at_stop(knot, tmp_path, short_dir: Path) -> None:  # type: ignore[no-untyped-def]
    path = short_dir / "policy.sock"
    _stale(path)  # as a supervisor killed with SIGKILL leaves it
    w = UnixWorker(tmp_path, knot, path)
    try:
        with connect(path) as s:
            assert ask(s, request(**REJECTED, instance="st", recipient="u@d.test")) == [REJECT_TEXT]
        assert f"removed the stale socket {path}" in w.proc.log_path.read_text()
    finally:
        w.proc.stop()
    assert w.proc.proc.returncode == 0
    assert not path.exists()  # a clean stop takes its file away


def test_reload_keeps_the_socket_until_a_restart(knot, tmp_path, short_dir: Path) -> None:  # type: ignore[no-untyped-def]
    path = short_dir / "policy.sock"
    w = UnixWorker(tmp_path, knot, path, 'socket_mode = "0600"\n')
    try:
        conf = next(tmp_path.glob("unix-*.toml"))
        text = conf.read_text().replace("policy.sock", "moved.sock").replace('"0600"', '"0666"')
        conf.write_text(text)
        os.kill(w.proc.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "configuration reloaded:" not in w.proc.log_path.read_text():
            assert time.monotonic() < deadline, w.proc.log_path.read_text()
            time.sleep(0.1)
        log = w.proc.log_path.read_text()
        assert f"policy_server.listen changed: that takes a restart; still listening on unix:{path}" in log
        assert "policy_server.socket_mode changed: that takes a restart" in log
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and not (short_dir / "moved.sock").exists()
        with connect(path) as s:
            assert ask(s, request(**REJECTED, instance="rl", recipient="u@d.test")) == [REJECT_TEXT]
    finally:
        w.proc.stop()


def test_a_regular_file_at_the_path_stops_the_start(tmp_path, short_dir: Path) -> None:  # type: ignore[no-untyped-def]
    path = short_dir / "policy.sock"
    path.write_text("an admin's notes\n")
    conf = tmp_path / "c.toml"
    conf.write_text(f'[registry]\nzones = ["x.test"]\n[policy_server]\nlisten = "unix:{path}"\n')
    argv = [sys.executable, "-m", "rspamd_regcheck", "--config", str(conf), "serve", "--listen"]
    proc = subprocess.run([*argv, f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2
    assert f"cannot listen on unix:{path}: the path exists and is not a socket" in proc.stderr, proc.stderr
    assert path.read_text() == "an admin's notes\n"
