"""The policy listener on a UNIX-domain socket (``[policy_server] listen = "unix:/path"``).

A TCP listener is made by each worker for itself (SO_REUSEPORT spreads the
connections); a UNIX socket cannot be shared that way.  So the supervisor
binds it once, before it forks the workers, and every worker accepts on the
listening socket it inherits (`_serve`).

What is found at the path when the supervisor starts:

- nothing: the socket is bound there;
- a socket nobody listens on (connecting is refused: left by a worker that
  did not stop cleanly): it is removed and the socket bound again;
- a socket someone listens on: `ListenError`, "in use";
- anything else (a regular file, a directory): `ListenError`; it is never removed.

After bind the file gets ``policy_server.socket_mode`` and, when set,
``policy_server.socket_group``, before the socket listens.  At a clean stop
the file is removed if it is still ours (the device and inode it had when it
was bound): a newer supervisor may have taken the path over since.
"""

from __future__ import annotations

import grp
import logging
import os
import re
import socket
import stat
from dataclasses import dataclass

from .errors import ConfigError, ListenError

log = logging.getLogger("rspamd_regcheck.serve")

PREFIX = "unix:"  # as Postfix writes a UNIX socket in check_policy_service
SUN_PATH_MAX = 108  # bytes of sockaddr_un.sun_path on Linux (unix(7)), the terminating NUL among them
DEFAULT_MODE = 0o666  # as Postfix's own private sockets: the directory's permissions protect them
BACKLOG = 1024  # as the TCP listeners (`_serve.listening_socket`)
_MODE = re.compile(r"0?[0-7]{3}")


@dataclass(frozen=True, slots=True)
class UnixAddress:
    """An absolute path a UNIX-domain socket listens at; written ``unix:/path``."""

    path: str

    def __str__(self) -> str:
        return PREFIX + self.path


def parse_unix(key: str, text: str) -> UnixAddress:
    """``unix:/absolute/path`` -> `UnixAddress`.

    :raises ConfigError: naming *key*, for an empty, relative or over-long path, a NUL in it,
        or a path that names a directory.
    """
    path = text.removeprefix(PREFIX)
    if not path:
        raise ConfigError(key, f"{text!r} has no path: write unix:/absolute/path")
    if "\0" in path:
        raise ConfigError(key, f"{text!r}: a path cannot hold a NUL character")
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        raise ConfigError(key, f"{text!r}: the path holds a control character")
    if not path.startswith("/"):
        # Postfix reads a relative unix: name under its queue directory; the worker has no such
        # place, and a path relative to wherever it was started from would be a trap.
        raise ConfigError(key, f"{path!r} is a relative path: give an absolute one (unix:/run/...)")
    if path.endswith("/"):
        raise ConfigError(key, f"{path!r} names a directory: give the socket's file name too")
    size = len(os.fsencode(path))
    if size >= SUN_PATH_MAX:
        raise ConfigError(key, f"the path is {size} bytes long; a UNIX socket's path takes at most {SUN_PATH_MAX - 1}")
    return UnixAddress(path)


def parse_mode(key: str, text: str) -> int:
    """An octal permission string (``"0666"``, ``"660"``) -> its number.

    :raises ConfigError: naming *key*, for anything else (set-id and sticky bits included).
    """
    if not _MODE.fullmatch(text):
        raise ConfigError(key, f'{text!r} is not a permission mode in octal, such as "0666" or "0660"')
    return int(text, 8)


def mode_text(mode: int) -> str:
    """The mode as `parse_mode` reads it back (``0o660`` -> ``"0660"``)."""
    return f"{mode:04o}"


def group_id(key: str, name: str) -> int:
    """The id of the group *name* on this host.

    :raises ConfigError: naming *key* when there is no such group.
    """
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(key, f"no group {name!r} on this host") from None


class UnixListener:
    """The listening UNIX socket the supervisor binds for its workers, and its file."""

    def __init__(self, address: UnixAddress, sock: socket.socket, ident: tuple[int, int]):
        self.address = address
        self.sock = sock
        self._ident = ident  # (st_dev, st_ino) of the socket file it bound

    @classmethod
    def bind(cls, address: UnixAddress, mode: int, group: str | None) -> UnixListener:
        """Bind and listen at *address* (a stale socket file there is replaced), with *mode* and *group*.

        :raises ListenError: when the path is in use, is not a socket, or cannot be bound,
            given the mode or given the group.
        """
        path = address.path
        _clear_stale(address)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                sock.bind(path)
            except OSError as exc:
                raise ListenError(address, _why(exc)) from exc
            st = os.lstat(path)
            ident = (st.st_dev, st.st_ino)
            try:
                # before listen(): until then a client's connect is refused, never let in
                os.chmod(path, mode)
                if group is not None:
                    os.chown(path, -1, group_id("policy_server.socket_group", group))
                sock.listen(BACKLOG)
            except (OSError, ConfigError) as exc:
                _remove_if(path, ident)
                why = exc.why if isinstance(exc, ConfigError) else _why(exc)
                given = f"mode {mode_text(mode)}" + ("" if group is None else f", group {group}")
                raise ListenError(address, f"{why} (giving it {given})") from exc
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        return cls(address, sock, ident)

    def close(self) -> None:
        """Close the socket and remove its file, if that is still the one this listener bound."""
        self.sock.close()
        _remove_if(self.address.path, self._ident)


def _clear_stale(address: UnixAddress) -> None:
    """Make room at *address*: remove a socket file nobody listens on; refuse anything else found there.

    :raises ListenError: when a process listens there, or the path is no socket.
    """
    path = address.path
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ListenError(address, _why(exc)) from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(address, "the path exists and is not a socket (left as it is)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)  # a listener with a full backlog says EAGAIN instead of making us wait
    try:
        probe.connect(path)
    except ConnectionRefusedError:  # a socket file nobody listens on: left by a process gone
        if _remove_if(path, (st.st_dev, st.st_ino)):
            log.warning("removed the stale socket %s (nothing listened on it)", path)
        return
    except FileNotFoundError:  # removed meanwhile
        return
    except BlockingIOError:
        pass  # a listener whose backlog is full: in use
    except OSError as exc:
        raise ListenError(address, _why(exc)) from exc
    finally:
        probe.close()
    raise ListenError(address, "in use: a process listens on it")


def _remove_if(path: str, ident: tuple[int, int]) -> bool:
    """Remove *path* if it is still the file *ident* names; whether it was removed."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) != ident:
            return False
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:  # e.g. the directory's permissions changed: say so, the stop goes on
        log.warning("cannot remove the socket %s: %s", path, exc.strerror or exc)
        return False
    return True


def _why(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "its directory does not exist"
    return exc.strerror or str(exc)


__all__ = ["UnixAddress", "UnixListener", "parse_mode", "parse_unix"]
