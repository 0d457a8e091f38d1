"""Client of the node agent (``dynamo_launch/agent.py``; protocol in docs/internals.md).

One agent per host, over one long-lived channel of the host's transport. Requests carry an
``id``; the response with that id resolves the request's future. Lines without an ``id`` are
events and go to a queue read through :meth:`AgentClient.events`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import importlib.util
import itertools
import json
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

import structlog

from ..errors import AgentError, ChannelClosed, CommandTimeout, DynamoLaunchError, TransportError, UnsafePath
from .base import Channel, Transport

__all__ = ["AgentClient", "agent_bytecode", "agent_source"]

log = structlog.get_logger(__name__)

# The agent's bootstrap, run as ``python -I -S -c _BOOT_PY PATH SHA256 serve --state-dir DIR`` on
# one SSH channel that then carries the agent's protocol (``-S``: the agent is standard library
# only, and an environment's site-packages — ``.pth`` files, editable installs — cost its
# interpreter's start up to half again on a node): it says whether PATH already holds
# that agent (``{"boot": "have"}``) or not (``{"boot": "need"}``: the client sends the source
# as one base64 line, written atomically, and a second line, its bytecode when the node's Python
# is ours: see agent_bytecode), then runs PATH as ``__main__`` in this interpreter through its
# module loader, as the shims load it, so its bytecode is cached next to it (``__pycache__``, used
# while it matches the file) and the agent is not compiled at every start: 25 of the 35 ms from
# the upload to ``hello`` on the test bed.
# One channel and one interpreter per host instead of three (check, upload, start): on a host
# every SSH exec channel costs a login shell (with whatever the user's rc files run), and at
# bring-up that per-host cost, not the daemon, is what grows with N.
# The state directory is checked before anything in it is read or run (``{"boot": "refused",
# "error"}`` otherwise): made 0700 when missing, else it must be a real directory of ours that
# nobody else can write; the agent file is opened without following a symlink and used only when
# it is ours. The agent then checks the rest (the directories above, run/) with private_dir.
_BOOT_PY = """\
import hashlib, json, os, stat, sys
from importlib.util import MAGIC_NUMBER, cache_from_source, module_from_spec, source_hash, spec_from_file_location
path, digest = sys.argv[1], sys.argv[2]
d = os.path.dirname(path) or "."
try:
    if not os.path.lexists(d):
        os.makedirs(d, 0o700)
    st = os.lstat(d)
    bad = ("is a symlink" if stat.S_ISLNK(st.st_mode) else "is not a directory" if not stat.S_ISDIR(st.st_mode)
           else "is owned by uid %d, not uid %d (another user created it?)" % (st.st_uid, os.geteuid())
           if st.st_uid != os.geteuid() else "is writable by group or others (mode %04o; chmod go-w)"
           % stat.S_IMODE(st.st_mode) if st.st_mode & 0o022 else None)
    bad = bad and bad + ": refusing to use it"
    if not bad and not os.access(d, os.W_OK | os.X_OK):  # (a read-only file system, for root too)
        bad = "is not writable here"
except OSError as e:
    bad = "cannot be created: %s" % (e.strerror or e)
if bad:
    sys.stdout.write(json.dumps({"boot": "refused", "error": "state_dir %s %s" % (d, bad)}) + "\\n")
    sys.exit(3)
try:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        have = os.fstat(f.fileno()).st_uid == os.geteuid() and hashlib.sha256(f.read()).hexdigest() == digest
except OSError:
    have = False
sys.stdout.write('{"boot": "%s", "magic": "%s"}\\n' % ("have" if have else "need", MAGIC_NUMBER.hex()))
sys.stdout.flush()
def put(target, data):
    tmp = "%s/.%s.%s.tmp" % (os.path.dirname(target), os.path.basename(target), os.urandom(6).hex())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
if not have:
    import base64
    data = base64.b64decode(sys.stdin.buffer.readline())
    code = base64.b64decode(sys.stdin.buffer.readline())
    if hashlib.sha256(data).hexdigest() != digest:
        sys.exit("agent upload: checksum mismatch")
    put(path, data)
    if code[:8] == MAGIC_NUMBER + b"\\3\\0\\0\\0" and code[8:16] == source_hash(data):
        try:
            os.makedirs(os.path.dirname(cache_from_source(path)), exist_ok=True)
            put(cache_from_source(path), code)
        except (OSError, NotImplementedError):
            pass
spec = spec_from_file_location("__main__", path)
sys.modules["__main__"] = module_from_spec(spec)
sys.argv = [path] + sys.argv[3:]
spec.loader.exec_module(sys.modules["__main__"])
"""

_END = object()  # end of the event stream


_AGENT = Path(__file__).resolve().parent.parent / "agent.py"


def agent_source() -> bytes:
    """The node agent's source, as shipped in this package."""
    try:
        return _AGENT.read_bytes()
    except OSError as e:
        raise DynamoLaunchError(f"node agent source {_AGENT} unreadable: {e.strerror}") from None


@functools.cache
def agent_bytecode(source: bytes) -> bytes:
    """``source`` (the packaged agent's) as a checked-hash ``.pyc`` (PEP 552) for interpreters of
    this Python version, from this package's own bytecode cache: sent with the source to a node
    that needs it, so that its bootstrap caches it and the node's interpreter (when it is this
    version: the bootstrap checks, and its loader checks it against the source at every start)
    does not compile the agent's 1700 lines (25 ms). Empty when there is no up-to-date cache here
    or ``source`` is not that file's."""
    try:
        cached = Path(importlib.util.cache_from_source(str(_AGENT))).read_bytes()
        st = _AGENT.stat()
    except (OSError, NotImplementedError):
        return b""
    header = importlib.util.MAGIC_NUMBER
    flags = int.from_bytes(cached[4:8], "little")
    if flags & 1:  # a hash-based cache: valid for the source with that hash
        fresh = cached[8:16] == importlib.util.source_hash(source)
    else:  # a timestamp cache, as Python checks it: the file's mtime and size (which must be this source's)
        fresh = (cached[8:12] == (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
                 and cached[12:16] == (st.st_size & 0xFFFFFFFF).to_bytes(4, "little") and len(source) == st.st_size
                 and source == agent_source())
    if cached[:4] != header or not fresh:
        return b""
    return header + (3).to_bytes(4, "little") + importlib.util.source_hash(source) + cached[16:]


class AgentClient:
    """Uploads (when needed), starts and talks to the node agent on ``transport``'s host.

    ``source`` overrides the agent code (tests); by default it is :func:`agent_source`.
    """

    def __init__(self, transport: Transport, state_dir: str, python: str, *, source: bytes | None = None):
        self.transport = transport
        self.state_dir = state_dir
        self.python = python
        self._source = source
        self.path: str | None = None
        self.info: dict[str, Any] = {}
        self._channel: Channel | None = None
        self._reader: asyncio.Task | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._events: asyncio.Queue = asyncio.Queue()
        self._closing = False
        self._dead: ChannelClosed | None = None

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and the end of the agent's channel."""
        return self._channel is not None and self._dead is None

    async def start(self, timeout: float = 30.0) -> dict[str, Any]:
        """Start the agent (uploading it on the same channel if that version is not on the host
        yet), return ``hello``."""
        source = self._source if self._source is not None else agent_source()
        digest = hashlib.sha256(source).hexdigest()
        self.path = f"{self.state_dir.rstrip('/') or '/'}/agent-{digest[:12]}.py"
        self._channel = await self.transport.start([self.python, "-I", "-S", "-c", _BOOT_PY, self.path, digest,
                                                    "serve", "--state-dir", self.state_dir])
        try:
            await self._boot(self._channel, source, timeout)
        except BaseException:
            await self.close()
            raise
        self._reader = asyncio.create_task(self._read_loop(self._channel))
        try:
            self.info = await self.call("hello", timeout=timeout)
        except AgentError as e:
            await self.close()
            if e.kind == "unsafe":  # the agent's own checks (the directories above, run/)
                raise UnsafePath(str(e), host=self.transport.host) from None
            raise
        except BaseException:
            await self.close()
            raise
        return self.info

    async def _boot(self, channel: Channel, source: bytes, timeout: float) -> None:
        """The bootstrap's first line; send the source when it asks for it."""
        try:
            line = await asyncio.wait_for(channel.read_line(), timeout)
        except TimeoutError:
            raise CommandTimeout(f"{self.transport.describe()}: agent did not start within {timeout:g}s",
                                 host=self.transport.host, timeout=timeout) from None
        if line is None:
            with contextlib.suppress(TransportError):
                await channel.close()
            code, tail = channel.returncode, channel.stderr_tail()
            raise ChannelClosed(f"{self.transport.describe()}: agent did not start ({self.python}: exit status "
                                f"{code})" + (f": {tail}" if tail else ""), host=self.transport.host)
        try:
            boot = json.loads(line)
            need = boot.get("boot") == "need"
        except (ValueError, AttributeError):
            raise TransportError(f"{self.transport.describe()}: agent bootstrap said {line[:200]!r}",
                                 host=self.transport.host) from None
        if boot.get("boot") == "refused":
            with contextlib.suppress(TransportError):
                await channel.close()
            error = " ".join(str(boot.get("error") or "state_dir refused").split())
            raise UnsafePath(f"{self.transport.describe()}: {error}", host=self.transport.host)
        if need:  # the source, then its bytecode when the node's Python is this one (or an empty line)
            await channel.write_line(base64.b64encode(source).decode("ascii"))
            same = boot.get("magic") == importlib.util.MAGIC_NUMBER.hex() and self._source is None
            await channel.write_line(base64.b64encode(agent_bytecode(source) if same else b"").decode("ascii"))

    async def call(self, op: str, /, timeout: float = 30.0, *, args: Mapping[str, Any] | None = None,
                   **kwargs: Any) -> Any:
        """Send request ``op`` and return its ``result``.

        Arguments are ``kwargs``, plus ``args`` for names that clash with this method's own
        (``exec`` takes a ``timeout``: ``call("exec", args={"argv": [...], "timeout": 5}, timeout=10)``).
        Raises :class:`AgentError` for ``ok: false``, :class:`ChannelClosed` when the agent is
        gone, :class:`CommandTimeout` when no answer comes within ``timeout`` seconds.
        """
        if self._dead is not None:
            raise self._dead
        if self._channel is None:
            raise ChannelClosed(f"{self.transport.describe()}: agent not started", host=self.transport.host)
        arguments = {**(args or {}), **kwargs}
        if "id" in arguments or "op" in arguments:
            raise ValueError("'id' and 'op' are reserved request fields")
        request_id = next(self._ids)
        request = {"id": request_id, "op": op, **arguments}
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._channel.write_line(json.dumps(request, separators=(",", ":")))
            response = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise CommandTimeout(
                f"{self.transport.describe()}: agent gave no answer to {op!r} within {timeout:g}s",
                host=self.transport.host, timeout=timeout,
            ) from None
        except ChannelClosed:
            raise self._dead or ChannelClosed(
                f"{self.transport.describe()}: agent channel closed", host=self.transport.host) from None
        finally:
            self._pending.pop(request_id, None)
        if response.get("ok"):
            return response.get("result")
        raise AgentError(
            str(response.get("kind") or "error"),
            f"{self.transport.describe()}: agent {op}: {' '.join(str(response.get('error') or 'failed').split())}",
            op=op, host=self.transport.host,
        )

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Agent events, in order, until the agent ends (one consumer).

        Ends quietly after :meth:`close`; raises :class:`ChannelClosed` when the agent died.
        """
        while True:
            item = await self._events.get()
            if item is _END:
                self._events.put_nowait(_END)  # later calls end too
                if self._dead is not None and not self._closing:
                    raise self._dead
                return
            yield item

    async def close(self) -> None:
        """Stop the agent (EOF on its stdin; killed if it lingers); fail pending calls."""
        self._closing = True
        channel = self._channel
        if channel is not None:
            with contextlib.suppress(TransportError):
                await channel.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, 2.0)
        self._finish(ChannelClosed(f"{self.transport.describe()}: agent closed", host=self.transport.host))

    async def _read_loop(self, channel: Channel) -> None:
        why = "end of output"
        try:
            while True:
                line = await channel.read_line()
                if line is None:
                    break
                self._dispatch(line)
        except TransportError as e:
            why = str(e)
        finally:
            if self._dead is None:
                code = channel.returncode
                tail = channel.stderr_tail()
                msg = f"{self.transport.describe()}: agent channel closed ({why}"
                msg += f"; exit status {code})" if code is not None else ")"
                self._finish(ChannelClosed(msg + (f": {tail}" if tail else ""), host=self.transport.host))

    def _dispatch(self, line: str) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            log.warning("agent sent a non-JSON line", host=self.transport.host, line=line[:200])
            return
        if not isinstance(msg, dict):
            log.warning("agent sent a non-object", host=self.transport.host, line=line[:200])
        elif "id" in msg:
            future = self._pending.get(msg["id"])
            if future is not None and not future.done():
                future.set_result(msg)
        elif "event" in msg:
            self._events.put_nowait(msg)
        else:
            log.warning("agent sent an unknown message", host=self.transport.host, line=line[:200])

    def _finish(self, error: ChannelClosed) -> None:
        if self._dead is not None:
            return
        self._dead = error
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        self._events.put_nowait(_END)
