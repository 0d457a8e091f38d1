"""SSH transport: one asyncssh connection per host, reused by every channel.

Host keys are checked against the inventory's known_hosts file by this module (not left to
asyncssh's generic error) so that a refusal can say exactly which key was offered:

* the offered key is listed for the host → connect;
* nothing is listed for the host → :class:`HostKeyUnknown` with the key type, its SHA256
  fingerprint and the ``ssh-keyscan … >> known_hosts`` command that trusts it; with
  ``accept_new_host_keys=True`` the key is accepted and appended instead (OpenSSH's
  ``StrictHostKeyChecking=accept-new``);
* other keys are listed for the host → :class:`HostKeyChanged` (possible man-in-the-middle),
  always, whatever ``accept_new_host_keys`` says.

Every asyncssh or socket exception is translated here into the project's error types; none
escapes this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
import time
import warnings
from typing import Mapping, Sequence

import structlog


@contextlib.contextmanager
def _ldconfig_only():
    """Asks ctypes only ldconfig's cache while asyncssh is imported.

    asyncssh looks for liboqs with ctypes.util.find_library, which for a library ldconfig does not
    list runs gcc and then ld (found on PATH) to search for it too: 25 ms of every `up` and `down`
    on a machine with a compiler. Without a PATH for that moment, /sbin/ldconfig (by its absolute
    path) is asked alone, which lists the library wherever a package installed it."""
    path = os.environ.get("PATH")
    os.environ["PATH"] = ""
    try:
        yield
    finally:
        if path is None:
            del os.environ["PATH"]
        else:
            os.environ["PATH"] = path


with warnings.catch_warnings(), _ldconfig_only():
    # cryptography deprecates DSA, and asyncssh's import names its types: ten lines of warnings
    # on every `up` and `down` for keys nobody here uses. Only that warning, only during import.
    warnings.filterwarnings("ignore", message="DSA is deprecated")
    import asyncssh

from ..errors import (
    AuthenticationFailed,
    ChannelClosed,
    CommandTimeout,
    HostKeyChanged,
    HostKeyUnknown,
    HostUnreachable,
    TransportError,
)
from ..plan.spec import PlanHost
from .acks import AckingConnector
from .base import Channel, Completed, LineChannel, StderrTail, Transport, decode_line, remote_command

__all__ = ["SshTransport", "keyscan_type"]

log = structlog.get_logger(__name__)

# asyncssh errors that mean "the channel or connection went away" once connected.
_GONE = (asyncssh.ChannelOpenError, asyncssh.DisconnectError, asyncssh.ConnectionLost, OSError, EOFError)

# sshd starts every session's command as a session leader (setsid), so its pid is also its
# process group. The command announces that pid on stderr before exec'ing argv (the line is
# removed again), because sshd ignores SSH "signal" requests (OpenSSH < 9.x) and closing a
# channel without a pty does not stop a process that never writes: a timed-out command is
# killed by process group over a second channel instead.
_PID_MARK = "__dynamo_launch_pid="
_PID_PREFIX = f"echo {_PID_MARK}$$ >&2; exec "

_KEYSCAN_TYPES = {
    "ssh-ed25519": "ed25519",
    "ssh-rsa": "rsa",
    "ssh-dss": "dsa",
    "sk-ssh-ed25519@openssh.com": "ed25519-sk",
    "sk-ecdsa-sha2-nistp256@openssh.com": "ecdsa-sk",
}


def keyscan_type(algorithm: str) -> str:
    """The ``ssh-keyscan -t`` name of a key algorithm (``ssh-ed25519`` → ``ed25519``)."""
    if algorithm.startswith("ecdsa-sha2-"):
        return "ecdsa"
    return _KEYSCAN_TYPES.get(algorithm, algorithm)


def _describe_key(key: asyncssh.SSHKey) -> str:
    return f"{key.get_algorithm()} {key.get_fingerprint('sha256')}"


class _Client(asyncssh.SSHClient):
    """Per-connection callbacks: host key decision (recorded for messages) and loss."""

    def __init__(self, owner: "SshTransport", known_hosts: asyncssh.SSHKnownHosts, accept_new: bool):
        self._owner = owner
        self._known_hosts = known_hosts
        self._accept_new = accept_new
        self.offered: asyncssh.SSHKey | None = None
        self.listed: list[asyncssh.SSHKey] = []
        self.verdict: str | None = None  # "unknown" | "changed" | "accepted"

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        # asyncssh calls this only for a key that known_hosts does not list for the host.
        self.offered = key
        host_keys, ca_keys, *_ = self._known_hosts.match(host, addr, None if port == 22 else port)
        self.listed = list(host_keys) + list(ca_keys)
        if self.listed:
            self.verdict = "changed"
            return False
        if self._accept_new:
            self.verdict = "accepted"
            return True
        self.verdict = "unknown"
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._connection_lost(self, exc)


class _SshChannel(LineChannel):
    """A remote process over one SSH session channel; holds a channel slot until closed."""

    GONE = _GONE

    @staticmethod
    def _why(e: BaseException) -> str:
        return _reason(e)

    def __init__(self, proc: asyncssh.SSHClientProcess, owner: "SshTransport"):
        super().__init__(proc, owner, StderrTail(pid_marker=_PID_MARK))
        self._released = False
        # The slot stands for an open SSH channel: free it as soon as the channel is gone,
        # whoever closed it, not only when close() is called.
        self._watch = asyncio.create_task(self._release_when_closed())

    async def _release_when_closed(self) -> None:
        with contextlib.suppress(Exception):
            await self._proc.wait_closed()
        self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._owner._slots.release()

    @property
    def pid(self) -> int | None:
        """The remote process id (also its process group), once announced."""
        return self._tail.pid

    async def read_line(self) -> str | None:
        try:
            data = await self._proc.stdout.readline()
        except _GONE as e:
            raise self._gone(_reason(e)) from None
        return decode_line(data)

    async def close(self, grace: float = 2.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._owner._channels.discard(self)
        proc = self._proc
        try:
            with contextlib.suppress(*_GONE):
                proc.stdin.write_eof()
            try:
                await asyncio.wait_for(proc.wait_closed(), grace)
            except asyncio.TimeoutError:
                # sshd keeps the session open until the process ends: kill it, then close.
                if self.pid is not None:
                    await self._owner._kill_group(self.pid)
                proc.close()
                with contextlib.suppress(asyncio.TimeoutError, *_GONE):
                    await asyncio.wait_for(proc.wait_closed(), 2.0)
        finally:
            self._release()
            self._watch.cancel()
            self._stderr_task.cancel()


class SshTransport(Transport):
    """Commands on a remote host over a single SSH connection.

    ``max_channels`` bounds the channels open at once (runs and started channels together);
    one more is used, rarely, to kill a timed-out command. OpenSSH's sshd refuses more than
    ``MaxSessions`` sessions per connection (10 by default): keep ``max_channels`` below that.
    Connection attempts: one, then ``connect_retries`` more after ``retry_delay`` seconds,
    doubling each time; then :class:`HostUnreachable`. Host key and authentication failures
    are not retried.
    """

    def __init__(
        self,
        host: PlanHost,
        *,
        accept_new_host_keys: bool = False,
        max_channels: int = 8,
        connect_retries: int = 3,
        retry_delay: float = 0.5,
    ):
        super().__init__(host.name, host.python)
        self.plan_host = host
        self.accept_new_host_keys = accept_new_host_keys
        self.connect_retries = connect_retries
        self.retry_delay = retry_delay
        self.known_hosts_path = os.path.expanduser(host.ssh.known_hosts)
        self._slots = asyncio.BoundedSemaphore(max_channels)
        self._kill_slot = asyncio.Lock()  # kills bypass _slots: never queued behind what they unblock
        self._connecting: asyncio.Future | None = None
        self._conn: asyncssh.SSHClientConnection | None = None
        self._client: _Client | None = None
        self._acks: AckingConnector | None = None  # the connection's, until its first session is open
        self._channels: set[_SshChannel] = set()
        self._background: set[asyncio.Task] = set()
        self._log = log.bind(host=host.name, address=f"{host.address}:{host.ssh.port}")

    # ---- connection ---------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._conn is not None

    def describe(self) -> str:
        h = self.plan_host
        return f"{h.name} ({h.ssh.user}@{h.address}:{h.ssh.port})"

    async def connect(self) -> None:
        await self._connection()

    async def _connection(self) -> asyncssh.SSHClientConnection:
        """The connection, made first if needed. Concurrent callers share one attempt cycle."""
        if self._conn is not None:
            return self._conn
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._establish())
            # retrieved here so that a failure nobody awaits any more is not reported as lost
            self._connecting.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(self._connecting)

    async def _establish(self) -> asyncssh.SSHClientConnection:
        delay, attempts, last = self.retry_delay, self.connect_retries + 1, "?"
        started = time.monotonic()
        for attempt in range(1, attempts + 1):
            try:
                conn = await self._connect_once()
            except _Retry as e:
                last = str(e)
                self._log.info("ssh connect failed", attempt=attempt, reason=last)
            else:
                self._conn = conn
                self.lost.clear()
                self._log.info("ssh connected", attempt=attempt)
                return conn
            if attempt < attempts:
                await asyncio.sleep(delay)
                delay *= 2
        raise HostUnreachable(
            f"{self.describe()}: unreachable after {attempts} attempt{'s' if attempts != 1 else ''} "
            f"in {time.monotonic() - started:.1f}s: {last}",
            host=self.host,
        )

    def _read_known_hosts(self) -> asyncssh.SSHKnownHosts:
        try:
            with open(self.known_hosts_path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            text = ""  # no file: no known keys
        except OSError as e:
            raise TransportError(
                f"{self.describe()}: cannot read known_hosts {self.known_hosts_path}: {e.strerror}", host=self.host
            ) from None
        try:
            return asyncssh.import_known_hosts(text)
        except ValueError as e:
            raise TransportError(f"{self.describe()}: {self.known_hosts_path}: {e}", host=self.host) from None

    def _client_keys(self) -> dict:
        key_file = self.plan_host.ssh.key_file
        if not key_file:
            return {}  # asyncssh's defaults: ~/.ssh/id_* and the agent
        path = os.path.expanduser(key_file)
        try:
            keys = asyncssh.load_keypairs([path])
        except (OSError, asyncssh.KeyImportError, ValueError) as e:
            why = getattr(e, "strerror", None) or str(e)
            raise AuthenticationFailed(f"{self.describe()}: cannot use key_file {path}: {why}", host=self.host) from None
        # Like OpenSSH's IdentitiesOnly: the named key, not whatever an agent holds.
        return {"client_keys": keys, "agent_path": None}

    def _host_key_algs(self, known: asyncssh.SSHKnownHosts) -> Sequence[str] | tuple:
        """Key types known_hosts lists for the host first, then every other default type.

        asyncssh would offer *only* the listed types; then a server that lost that key type
        fails key exchange without ever showing its key, and we could not name a fingerprint.
        """
        h = self.plan_host
        host_keys, ca_keys, *_ = known.match(h.address, "", None if h.ssh.port == 22 else h.ssh.port)
        if not host_keys or ca_keys:
            return ()
        from asyncssh.public_key import get_default_public_key_algs

        algs: list[str] = []
        for alg in [a for k in host_keys for a in k.sig_algorithms] + list(get_default_public_key_algs()):
            name = alg.decode("ascii")
            if name not in algs:
                algs.append(name)
        return algs

    async def _connect_once(self) -> asyncssh.SSHClientConnection:
        h = self.plan_host
        known = self._read_known_hosts()
        client = _Client(self, known, self.accept_new_host_keys)
        acks = AckingConnector()  # a first channel would otherwise wait ~40 ms for an ACK (acks.py)
        try:
            conn = await asyncssh.connect(
                h.address,
                port=h.ssh.port,
                tunnel=acks,
                username=h.ssh.user,
                known_hosts=known,
                server_host_key_algs=self._host_key_algs(known),
                client_factory=lambda: client,
                connect_timeout=h.ssh.connect_timeout,
                keepalive_interval=h.ssh.keepalive_interval,
                keepalive_count_max=h.ssh.keepalive_count_max,
                preferred_auth="publickey",
                config=None,  # the inventory is the only source of settings, not ~/.ssh/config
                **self._client_keys(),
            )
        except asyncssh.HostKeyNotVerifiable as e:
            raise self._host_key_error(client, e) from None
        except asyncssh.PermissionDenied as e:
            self._remember_accepted(client)  # key exchange was done: the key is the host's
            raise AuthenticationFailed(
                f"{self.describe()}: authentication failed ({e.reason or 'permission denied'}); "
                f"key_file {h.ssh.key_file or '(ssh defaults)'} not accepted for user {h.ssh.user}",
                host=self.host,
            ) from None
        except (asyncssh.DisconnectError, asyncssh.ConnectionLost, asyncio.TimeoutError, OSError, EOFError) as e:
            if isinstance(e, asyncio.TimeoutError):
                raise _Retry(f"no SSH session within connect_timeout {h.ssh.connect_timeout:g}s") from None
            raise _Retry(_reason(e)) from None
        self._client = client
        self._acks = acks
        self._remember_accepted(client)
        return conn

    def _known_hosts_entry(self) -> str:
        """How known_hosts names this host: ``address``, or ``[address]:port`` off port 22."""
        h = self.plan_host
        return h.address if h.ssh.port == 22 else f"[{h.address}]:{h.ssh.port}"

    def _keyscan(self, key: asyncssh.SSHKey) -> str:
        h = self.plan_host
        return (
            f"ssh-keyscan -p {h.ssh.port} -t {keyscan_type(key.get_algorithm())} {shlex.quote(h.address)} "
            f">> {shlex.quote(self.known_hosts_path)}"
        )

    def _host_key_error(self, client: _Client, exc: Exception) -> TransportError:
        key = client.offered
        kh = self.known_hosts_path
        if key is None:  # rejected before our callback: a revoked key, or one asyncssh cannot read
            return HostKeyChanged(f"{self.describe()}: host key rejected ({_reason(exc)}); not connecting", host=self.host)
        offered, fp, cmd = _describe_key(key), key.get_fingerprint("sha256"), self._keyscan(key)
        if client.verdict == "changed":
            listed = ", ".join(_describe_key(k) for k in client.listed)
            entry = self._known_hosts_entry()
            return HostKeyChanged(
                f"{self.describe()}: HOST KEY CHANGED, possible man-in-the-middle, not connecting: host offers "
                f"{offered} but {kh} lists {listed}; if the change is legitimate, verify {fp} out of band, "
                f"run `ssh-keygen -R {shlex.quote(entry)} -f {shlex.quote(kh)}` then `{cmd}`",
                host=self.host, key_type=key.get_algorithm(), fingerprint=fp, command=cmd,
            )
        return HostKeyUnknown(
            f"{self.describe()}: host key {offered} is not in {kh}; verify the fingerprint out of band, "
            f"then trust it with `{cmd}` (or allow accept_new_host_keys)",
            host=self.host, key_type=key.get_algorithm(), fingerprint=fp, command=cmd,
        )

    def _remember_accepted(self, client: _Client) -> None:
        """Append a key accepted on first use to known_hosts (key exchange has succeeded)."""
        if client.verdict != "accepted" or client.offered is None:
            return
        client.verdict = "recorded"
        key_text = client.offered.export_public_key("openssh").decode("ascii").split()
        line = f"{self._known_hosts_entry()} {key_text[0]} {key_text[1]}\n"
        try:
            parent = os.path.dirname(self.known_hosts_path)
            if parent:
                os.makedirs(parent, mode=0o700, exist_ok=True)
            with open(self.known_hosts_path, "ab+") as f:  # one O_APPEND write: safe alongside others
                if f.seek(0, os.SEEK_END) > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        line = "\n" + line
                f.write(line.encode("ascii"))
        except OSError as e:
            self._log.warning("cannot record host key", known_hosts=self.known_hosts_path, error=e.strerror)
            return
        self._log.warning(
            "new host key accepted and recorded", key=_describe_key(client.offered), known_hosts=self.known_hosts_path
        )

    def _connection_lost(self, client: _Client, exc: Exception | None) -> None:
        if client is not self._client:
            return  # a connection that never became ours, or one we closed
        self._client = None
        self._conn = None
        self.lost.set()
        self._log.warning("ssh connection lost", reason=_reason(exc) if exc else "closed by the server")

    async def close(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        for channel in list(self._channels):
            with contextlib.suppress(Exception):
                await channel.close(grace=0.5)
        conn, self._conn, self._client = self._conn, None, None  # not "lost": we closed it
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5.0)

    async def abort(self) -> None:
        conn, self._conn, self._client = self._conn, None, None  # not "lost": we dropped it
        if conn is not None:
            conn.abort()  # the socket is closed now: unsent requests are discarded, not flushed
        # Only this connection's channels (taken before any await: a reconnect may already be
        # opening the next connection, which must not be touched).
        for channel in list(self._channels):
            with contextlib.suppress(Exception):
                await channel.close(grace=0.1)

    # ---- commands -----------------------------------------------------------------------------
    async def _open(self, argv: Sequence[str], env: Mapping[str, str] | None) -> asyncssh.SSHClientProcess:
        """A process on a fresh session channel; the caller holds a channel slot."""
        command = _PID_PREFIX + remote_command(argv, env)
        conn = await self._connection()
        try:
            proc = await conn.create_process(command, encoding=None)
        except asyncssh.ChannelOpenError as e:
            raise ChannelClosed(f"{self.describe()}: cannot open a channel: {_reason(e)}", host=self.host) from None
        except _GONE as e:
            raise ChannelClosed(f"{self.describe()}: connection lost: {_reason(e)}", host=self.host) from None
        if self._acks is not None:  # sshd sends at once now that a session runs
            self._acks.settle()
            self._acks = None
        return proc

    async def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Completed:
        remote_command(argv, env)  # validate before waiting for anything
        await self._connection()  # before taking a slot: waiters share one connection attempt
        async with self._slots:
            proc = await self._open(argv, env)
            try:
                if input:
                    proc.stdin.write(input)  # queued; flow control sends it as the window allows
                proc.stdin.write_eof()
                result = await asyncio.wait_for(proc.wait(), timeout)
            except asyncio.TimeoutError:
                out, err = proc.collect_output()
                pid, err = _strip_pid(err or b"")
                if pid is not None:
                    await self._kill_group(pid)
                raise CommandTimeout(
                    f"{self.describe()}: command timed out after {timeout:g}s and was killed: {argv[0]}",
                    host=self.host, timeout=timeout or 0.0, stdout=out or b"", stderr=err,
                ) from None
            except _GONE as e:
                raise ChannelClosed(f"{self.describe()}: channel lost during {argv[0]}: {_reason(e)}",
                                    host=self.host) from None
            except BaseException:  # cancelled: do not leave the command running
                pid, _ = _strip_pid(proc.collect_output()[1] or b"")
                if pid is not None:
                    task = asyncio.get_running_loop().create_task(self._kill_group(pid))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
                raise
            finally:
                proc.close()
        code = result.returncode
        if code is None and result.exit_signal:
            code = -_signum(result.exit_signal[0])
        _, err = _strip_pid(result.stderr or b"")
        return Completed(code, result.stdout or b"", err)

    async def _kill_group(self, pid: int) -> None:
        """SIGKILL the remote process group ``pid`` (a command that outlived its timeout).

        Uses its own channel outside the ``max_channels`` slots, one kill at a time.
        """
        command = shlex.join(["sh", "-c", 'kill -KILL -- "-$1" 2>/dev/null || kill -KILL "$1" 2>/dev/null; exit 0',
                              "sh", str(int(pid))])
        try:
            async with self._kill_slot:
                conn = await self._connection()
                result = await asyncio.wait_for(conn.run(command, encoding=None), 10)
        except (asyncio.TimeoutError, TransportError, *_GONE) as e:
            self._log.warning("cannot kill remote process group", pid=pid, error=_reason(e))
            return
        if result.returncode != 0:
            self._log.warning("cannot kill remote process group", pid=pid, code=result.returncode)

    async def start(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> Channel:
        remote_command(argv, env)
        await self._connection()
        await self._slots.acquire()
        try:
            proc = await self._open(argv, env)
        except BaseException:
            self._slots.release()
            raise
        channel = _SshChannel(proc, self)
        self._channels.add(channel)
        return channel


class _Retry(Exception):
    """A connection attempt failed in a way another attempt may fix (internal)."""


def _strip_pid(stderr: bytes) -> tuple[int | None, bytes]:
    """The pid announced on stderr by ``_PID_PREFIX``, and stderr without that line."""
    mark = _PID_MARK.encode()
    start = 0 if stderr.startswith(mark) else stderr.find(b"\n" + mark) + 1
    if start == 0 and not stderr.startswith(mark):
        return None, stderr
    end = stderr.find(b"\n", start)
    if end < 0:
        return None, stderr  # not complete yet
    try:
        pid = int(stderr[start + len(mark):end])
    except ValueError:
        return None, stderr
    return pid, stderr[:start] + stderr[end + 1:]


def _signum(name: str) -> int:
    try:
        return int(signal.Signals["SIG" + name])
    except KeyError:
        return 0


def _reason(e: BaseException | None) -> str:
    """One line for an asyncssh or socket exception."""
    if e is None:
        return "closed"
    if isinstance(e, asyncssh.DisconnectError):
        text = e.reason or type(e).__name__
    elif isinstance(e, asyncssh.ChannelOpenError):
        text = e.reason or f"channel open refused (code {e.code})"
    elif isinstance(e, socket.gaierror):
        text = f"cannot resolve address: {e.strerror}"
    elif isinstance(e, OSError) and e.errno:
        text = os.strerror(e.errno)  # asyncio's strerror lists addresses; the errno says why
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())
