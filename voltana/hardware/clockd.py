"""``voltana clockd``: the one privileged process that locks GPU clocks (and sets the power limit), so engines
run without CAP_SYS_ADMIN.

The daemon opens one GPU group (``hardware.vendor`` / ``hardware.device_indices`` of its config) and listens
on a Unix stream socket. Each connection is checked with ``SO_PEERCRED``: only the allowed user or group ids
may talk to it (default: the daemon's own uid). One connection at a time owns the clocks and the power limit;
when the owner disconnects for any reason (clean close, SIGKILL, OOM kill of the engine) the daemon resets
what it set (clocks, power limit) at once. Engines point ``hardware.clockd_socket`` at it: clock locks, power
limits and their resets go through the daemon; energy, clock and power-limit reads stay in the engine (they
need no privilege).

Protocol: one JSON object per line, each request answered by one line.

- ``{"op": "hello"}`` -> ``{"ok": true, "vendor": str, "devices": [int], "uuids": [str | null],
  "supported_clocks_mhz": [int]}``: an engine refuses a daemon whose vendor or GPUs differ from its own
  (:func:`check_same_gpus`)
- ``{"op": "lock", "clock_mhz": int}`` -> ``{"ok": true, "read_back_mhz": int}``
- ``{"op": "reset"}`` -> ``{"ok": true}``
- ``{"op": "power_limit", "limit_w": float}`` -> ``{"ok": true, "read_back_w": float}`` (W per GPU)
- ``{"op": "power_reset"}`` -> ``{"ok": true}`` (the driver's default power limit)
- any failure -> ``{"ok": false, "kind": <voltana error class>, "error": <one line>}``
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import stat
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voltana.hardware import errors
from voltana.hardware.device import DeviceCapabilities, GpuGroup, call_every
from voltana.hardware.errors import InvalidArgumentError, VoltanaHardwareError

logger = logging.getLogger("voltana.hardware")
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The connecting process, as the kernel reports it (``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """``SO_PEERCRED`` of a connected Unix socket."""
    pid, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return PeerCredentials(pid, uid, gid)


def _error_reply(exc: Exception) -> dict[str, Any]:
    return {"ok": False, "kind": type(exc).__name__, "error": " ".join(str(exc).split())}


class ClockDaemon:
    """Serves ``group``'s clock locks on ``socket_path`` to peers whose uid/gid is allowed.

    ``allowed_uids`` empty and ``allowed_gids`` empty: only the daemon's own uid. The socket is created with
    mode 0660 (owner and group); put it in a directory only the intended users can reach.
    """

    def __init__(
        self,
        group: GpuGroup,
        socket_path: str | Path,
        allowed_uids: Iterable[int] = (),
        allowed_gids: Iterable[int] = (),
    ) -> None:
        self.group = group
        self.socket_path = Path(socket_path)
        self.allowed_uids = frozenset(allowed_uids) or frozenset({os.getuid()})
        self.allowed_gids = frozenset(allowed_gids)
        self._lock = threading.Lock()
        self._owner: PeerCredentials | None = None
        self._owner_token: object | None = None
        self._held: set[str] = set()  # what the owner set: "clocks", "power limit"
        self._server: socketserver.ThreadingUnixStreamServer | None = None

    def allowed(self, peer: PeerCredentials) -> bool:
        """Whether ``peer`` may use the daemon."""
        return peer.uid in self.allowed_uids or peer.gid in self.allowed_gids

    def handle(self, request: dict[str, Any], peer: PeerCredentials, token: object) -> dict[str, Any]:
        """Answer one request of the connection ``token`` (never raises)."""
        op = request.get("op")
        try:
            if op == "hello":
                return {
                    "ok": True,
                    "vendor": self.group.vendor,
                    "devices": [d.index for d in self.group.devices],
                    "uuids": [d.uuid for d in self.group.devices],
                    "supported_clocks_mhz": list(self.group.supported_clocks_mhz()),
                }
            if op == "lock":
                clock_mhz = request.get("clock_mhz")
                if not isinstance(clock_mhz, int) or isinstance(clock_mhz, bool):
                    raise InvalidArgumentError(f"lock needs an integer clock_mhz, got {clock_mhz!r}")
                with self._lock:
                    self._check_owner(token)
                    read_back = self.group.lock_clock_mhz(clock_mhz)
                    self._hold(peer, token, "clocks")
                return {"ok": True, "read_back_mhz": int(read_back)}
            if op == "power_limit":
                limit_w = request.get("limit_w")
                if not isinstance(limit_w, int | float) or isinstance(limit_w, bool):
                    raise InvalidArgumentError(f"power_limit needs a number limit_w (W), got {limit_w!r}")
                with self._lock:
                    self._check_owner(token)
                    read_back_w = self.group.set_power_limit_w(float(limit_w))
                    self._hold(peer, token, "power limit")
                return {"ok": True, "read_back_w": float(read_back_w)}
            if op in ("reset", "power_reset"):
                with self._lock:
                    self._check_owner(token)
                    self._release({"clocks"} if op == "reset" else {"power limit"})
                return {"ok": True}
            raise InvalidArgumentError(
                f"unknown op {op!r}; expected hello, lock, reset, power_limit or power_reset"
            )
        except VoltanaHardwareError as exc:
            return _error_reply(exc)

    def _check_owner(self, token: object) -> None:
        """Raise ``NoPermissionError`` when another connection holds the clocks or the power limit."""
        if self._owner_token not in (None, token):
            owner = self._owner
            raise errors.NoPermissionError(
                f"the GPU clocks are held by another client (pid {owner.pid if owner else '?'})"
            )

    def _hold(self, peer: PeerCredentials, token: object, what: str) -> None:
        self._owner, self._owner_token = peer, token
        self._held.add(what)

    def disconnected(self, token: object) -> None:
        """The connection ``token`` is gone: reset what it set (clocks, power limit) now."""
        with self._lock:
            if self._owner_token is token:
                owner = self._owner
                held = " and the ".join(sorted(self._held)) or "clocks"
                try:
                    self._release({"clocks", "power limit"})
                except VoltanaHardwareError as exc:
                    logger.error(
                        "voltana clockd: could not reset the %s after pid %s left: %s", held, owner, exc
                    )
                else:
                    logger.warning(
                        "voltana clockd: client pid %s disconnected holding the %s; reset them",
                        owner.pid if owner else "?",
                        held,
                    )

    def _release(self, what: set[str]) -> None:
        """Give back ``what`` the owner holds ("clocks", "power limit"); the owner is released when it holds
        nothing more. Every reset is tried; the first error is re-raised."""
        held = self._held & what
        self._held -= what
        if not self._held:
            self._owner = self._owner_token = None
        actions = [self.group.reset_clocks] if "clocks" in held else []
        if "power limit" in held:
            actions.append(self.group.reset_power_limit)
        call_every(actions)

    def serve_forever(self, on_ready: Callable[[], None] | None = None) -> None:
        """Listen and serve until :meth:`shutdown`; then reset held clocks and remove the socket."""
        daemon = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                peer = peer_credentials(self.request)
                if not daemon.allowed(peer):
                    reply = _error_reply(
                        errors.NoPermissionError(
                            f"uid {peer.uid} / gid {peer.gid} is not allowed by this voltana clockd "
                            "(start it with --allow-uid / --allow-gid)"
                        )
                    )
                    self.wfile.write(json.dumps(reply).encode() + b"\n")
                    return
                token = object()
                try:
                    for line in self.rfile:
                        try:
                            request = json.loads(line)
                            if not isinstance(request, dict):
                                raise ValueError("not an object")
                        except ValueError as exc:
                            reply = _error_reply(InvalidArgumentError(f"bad request: {exc}"))
                        else:
                            reply = daemon.handle(request, peer, token)
                        self.wfile.write(json.dumps(reply).encode() + b"\n")
                except OSError:
                    pass
                finally:
                    daemon.disconnected(token)

        claim_socket_path(self.socket_path)
        server = socketserver.ThreadingUnixStreamServer(str(self.socket_path), Handler)
        server.daemon_threads = True
        os.chmod(self.socket_path, 0o660)
        self._server = server
        try:
            if on_ready is not None:
                on_ready()
            server.serve_forever(poll_interval=0.2)
        finally:
            server.server_close()
            with self._lock, contextlib.suppress(VoltanaHardwareError):
                self._release({"clocks", "power limit"})
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` (from another thread)."""
        if self._server is not None:
            self._server.shutdown()


class ClockdSocketError(VoltanaHardwareError):
    """The daemon's socket path is taken: a live daemon serves it, or it is not a socket."""


def claim_socket_path(path: Path) -> None:
    """Make ``path`` free for a new socket: remove only a *stale* socket (nobody accepts on it).

    Raises :class:`ClockdSocketError` (one line, nothing removed) when another process serves the socket or
    when ``path`` is anything but a socket (the daemon runs as root: it must never delete a user's file).
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ClockdSocketError(
            f"{path} exists and is not a socket; voltana clockd never removes it: pass another --socket"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        pass  # nobody listens: a socket left by a daemon that died
    else:
        raise ClockdSocketError(
            f"another voltana clockd is serving {path}; stop it first or pass another --socket"
        )
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def check_same_gpus(info: dict[str, Any], local: GpuGroup, socket_path: str) -> None:
    """Raise :class:`~voltana.hardware.errors.ClockdMismatchError` unless the daemon's ``hello`` (``info``)
    names the vendor and the physical GPUs of ``local``.

    GPUs are compared by UUID where both sides report them (process-visible indices differ legitimately
    under ``CUDA_VISIBLE_DEVICES``), else by index.
    """

    def describe(vendor: object, indices: object, uuids: object) -> str:
        named = uuids if isinstance(uuids, list) and all(uuids) else None
        return f"{vendor} GPU(s) {indices}" + (f" ({', '.join(map(str, named))})" if named else "")

    local_indices = [d.index for d in local.devices]
    local_uuids = [d.uuid for d in local.devices]
    their_uuids = info.get("uuids")
    if isinstance(their_uuids, list) and their_uuids and all(their_uuids) and all(local_uuids):
        same = sorted(map(str, their_uuids)) == sorted(map(str, local_uuids))
    else:
        same = info.get("devices") == local_indices
    if info.get("vendor") == local.vendor and same:
        return
    raise errors.ClockdMismatchError(
        f"voltana clockd at {socket_path} serves "
        f"{describe(info.get('vendor'), info.get('devices'), their_uuids)} but this engine drives "
        f"{describe(local.vendor, local_indices, local_uuids)}: its locks would land on other GPUs; start "
        "clockd with the same hardware.vendor and device_indices (and GPUs) as the engine",
        local_group=local,
    )


class ClockdClient:
    """An engine's connection to ``voltana clockd``; raises ``VoltanaHardwareError`` subclasses (one line)."""

    def __init__(self, socket_path: str | Path, timeout_s: float = 5.0) -> None:
        self.socket_path = str(socket_path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout_s)
        try:
            self._sock.connect(self.socket_path)
        except OSError as exc:
            self._sock.close()
            if isinstance(exc, PermissionError):
                fix = (
                    f"this user (uid {os.getuid()}, gid {os.getgid()}) may not open the socket: start clockd "
                    f"with --allow-uid {os.getuid()} (or --allow-gid) and make the socket's directory "
                    "reachable for this user"
                )
            else:
                fix = (
                    f"start it with `sudo voltana clockd --socket {self.socket_path} --allow-uid "
                    f"{os.getuid()}`, or fix hardware.clockd_socket"
                )
            raise errors.ClockdUnreachableError(
                f"cannot reach voltana clockd at {self.socket_path}: {exc.strerror or exc}; {fix}", fix
            ) from None
        self._reader = self._sock.makefile("rb")
        self._lock = threading.Lock()
        self.info = self._call({"op": "hello"})

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            try:
                self._sock.sendall(json.dumps(request).encode() + b"\n")
                line = self._reader.readline()
            except OSError as exc:
                raise VoltanaHardwareError(f"voltana clockd at {self.socket_path} failed: {exc}") from None
        if not line:
            raise VoltanaHardwareError(f"voltana clockd at {self.socket_path} closed the connection")
        reply = json.loads(line)
        if not reply.get("ok"):
            kind = getattr(errors, str(reply.get("kind")), VoltanaHardwareError)
            if not (isinstance(kind, type) and issubclass(kind, VoltanaHardwareError)):
                kind = VoltanaHardwareError
            raise kind(f"voltana clockd: {reply.get('error')}")
        return dict(reply)

    def lock_clock_mhz(self, clock_mhz: int) -> int:
        """Lock through the daemon; returns the read-back clock (MHz)."""
        return int(self._call({"op": "lock", "clock_mhz": int(clock_mhz)})["read_back_mhz"])

    def reset_clocks(self) -> None:
        """Reset through the daemon."""
        self._call({"op": "reset"})

    def set_power_limit_w(self, limit_w: float) -> float:
        """Set the power limit (W per GPU) through the daemon; returns the limit read back (W)."""
        return float(self._call({"op": "power_limit", "limit_w": float(limit_w)})["read_back_w"])

    def reset_power_limit(self) -> None:
        """Restore the default power limit through the daemon."""
        self._call({"op": "power_reset"})

    def close(self) -> None:
        """Disconnect (the daemon resets clocks this client still holds)."""
        with contextlib.suppress(OSError):
            self._reader.close()
            self._sock.close()


class ClockdGpuGroup(GpuGroup):
    """A GPU group whose clock locks and resets go through ``voltana clockd``; reads stay local."""

    def __init__(self, local: GpuGroup, client: ClockdClient) -> None:
        super().__init__(local.devices)
        self.client = client

    def lock_clock_mhz(self, clock_mhz: int) -> int:
        self.check_supported(clock_mhz)
        return self.client.lock_clock_mhz(clock_mhz)

    def reset_clocks(self) -> None:
        self.client.reset_clocks()

    def set_power_limit_w(self, limit_w: float) -> float:
        self.power_limits().check(limit_w)  # read locally: one clear line before any daemon call
        return self.client.set_power_limit_w(limit_w)

    def reset_power_limit(self) -> None:
        self.client.reset_power_limit()

    def capabilities(self) -> DeviceCapabilities:
        local = super().capabilities()
        return DeviceCapabilities(True, local.has_energy_counter, local.has_power_reading, "")

    def close(self) -> None:
        self.client.close()
        super().close()
