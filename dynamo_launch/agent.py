#!/usr/bin/env python3
"""dynamo-launch node agent (protocol: docs/internals.md, "Node agent").

Shipped to every node and run as ``python agent.py serve --state-dir DIR``. Speaks JSON lines on
stdin/stdout: one response (same ``id``) per request, plus unsolicited ``{"event": ...}`` lines.
Processes are started under a detached shim (``python agent.py shim``, spec on stdin) that
records them in ``DIR/run/<name>.json`` and outlives the agent; the agent only watches them.

Standard library only, Python >= 3.8, Linux: this file must run on any node as it is.
"""

import fcntl
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, suppress

VERSION = "1"
AGENT_FILE = os.path.abspath(__file__)
# A shim starts this file as a module rather than a script, so its bytecode is cached next to it
# (``__pycache__``) and not compiled again for every process: a third of a shim's start.
SHIM_BOOT = ("import sys\n"
             "from importlib.util import module_from_spec, spec_from_file_location\n"
             "spec = spec_from_file_location('dynamo_launch_agent', sys.argv[1])\n"
             "agent = module_from_spec(spec)\n"
             "spec.loader.exec_module(agent)\n"
             "agent.shim_main()\n")
OUTPUT_LIMIT = 64 * 1024  # per stream of `exec`
READ_LIMIT = 1 << 20  # largest answer of `tail` / `read`
TMP_JSON_AGE = 600  # seconds: a leftover engine logging config in the node's TMPDIR older than this goes
EXIT_LINES, EXIT_LINES_LIMIT = 10, 4096  # a process's last log lines, sent with its exit (status shows them)
TAILS_MAX, TAILS_LIMIT = 1024, 65536  # `tails`: paths per request, bytes read from the end of each
SIGNALS = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL}
LAUNCH_VARS = ("DYNAMO_LAUNCH_ID", "DYNAMO_LAUNCH_NAME", "DYNAMO_LAUNCH_GENERATION")
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@+-")
DEAD = ("Z", "X", "x")  # process states that count as gone


class Refused(Exception):
    """A request that cannot be served; ``kind`` classifies it for the daemon."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


class After:
    """A result plus work to do once the response is out (so an exit event never precedes it)."""

    def __init__(self, result, then):
        self.result, self.then = result, then


def note(message):
    """A diagnostic line on stderr (stdout belongs to the protocol). Never pass env values."""
    try:
        sys.stderr.write("dynamo-launch agent[%d]: %s\n" % (os.getpid(), message))
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def one_line(text):
    return " ".join(str(text).split()) or "failed"


def child_path(path, python=None):
    """PATH for what the agent starts: this interpreter's directory first, unless PATH has it already.

    The agent runs under the inventory's python, so its environment is "activated" for its
    children: ``nats-server`` shipped in a wheel, ``ray`` and ``python3`` resolve to that
    environment's. ``path`` None (no PATH at all) stands for the default search path.
    """
    folder = os.path.dirname(sys.executable if python is None else python)
    if not os.path.isabs(folder):
        return os.defpath if path is None else path
    current = os.defpath if path is None else path
    if os.path.normpath(folder) in [os.path.normpath(p) for p in current.split(os.pathsep) if p]:
        return current
    return folder + os.pathsep + current if current else folder


# ---- /proc and files ---------------------------------------------------------------------------
def boot_id():
    """This boot's id: with pid and start time it names one process for all time."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def proc_stat(pid):
    """``(state, start_time)`` of ``pid`` from /proc/PID/stat (start_time: field 22), or None."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # the command name may hold spaces and ')'
        return fields[0].decode(), int(fields[19])
    except (OSError, IndexError, ValueError, TypeError):
        return None


def owned_by_us(pid):
    """True when process ``pid`` runs as our user: the agent signals nothing else (a planted
    record or a forged scan result never makes it kill another user's process)."""
    try:
        return os.stat("/proc/%d" % pid).st_uid == os.geteuid()
    except (OSError, TypeError):
        return False


def is_running(pid, start_time):
    """True when ``pid`` exists, is not a zombie and started at ``start_time`` (no pid reuse)."""
    st = proc_stat(pid) if isinstance(pid, int) and pid > 0 else None
    return st is not None and st[1] == start_time and st[0] not in DEAD


def record_alive(rec):
    """True when the record's process runs now: pid + start_time + boot_id all match."""
    return rec.get("boot_id") == boot_id() and is_running(rec.get("pid"), rec.get("start_time"))


def write_json_atomic(path, obj):
    """Replace ``path`` with ``obj`` so that a crash leaves the old or the new file, never half.

    The temp file is created exclusively and never through a symlink (mode 0600 from the start).
    """
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with suppress(FileNotFoundError):
        os.unlink(tmp)  # a leftover of a crashed writer that had our pid
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        data = json.dumps(obj, sort_keys=True).encode()
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fsync_dir(os.path.dirname(path))


def fsync_dir(path):
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- files the launcher trusts -----------------------------------------------------------------
# Other local users may create files and directories before the launcher does (in /tmp, say) and
# plant symlinks: whatever the launcher reuses must be its own and writable by nobody else, and
# nothing is opened through a symlink. The head's daemon uses these functions too.
class Unsafe(Exception):
    """A path the launcher refuses to use; the message names it and why, in one line."""


def owner_name(uid):
    """``uid 1001`` (with the user's name where it has one), for messages."""
    try:
        import pwd
        return "uid %d (%s)" % (uid, pwd.getpwuid(uid).pw_name)
    except (ImportError, KeyError):
        return "uid %d" % uid


def unsafe_reason(st, euid=None):
    """Why a directory or file with ``lstat`` result ``st`` may not be trusted by ``euid``, or None."""
    import stat as S
    euid = os.geteuid() if euid is None else euid
    if S.S_ISLNK(st.st_mode):
        return "is a symlink"
    if st.st_uid != euid:
        return "is owned by %s, not %s (another user created it?)" % (owner_name(st.st_uid), owner_name(euid))
    if st.st_mode & 0o022:
        return "is writable by %s (mode %04o; chmod go-w)" % (
            "group and others" if st.st_mode & 0o022 == 0o022 else "group" if st.st_mode & 0o020 else "others",
            S.S_IMODE(st.st_mode))
    return None


def check_ancestors(path, euid=None):
    """Raise :class:`Unsafe` when a directory above ``path`` lets another user replace what is in it:
    owned by someone other than root and us, or writable by others without the sticky bit (/tmp
    is fine: sticky, so nobody can rename or remove what we made there)."""
    euid = os.geteuid() if euid is None else euid
    parent = os.path.dirname(path)
    while True:
        try:
            st = os.stat(parent)  # a symlinked ancestor (/var/run -> /run) is the directory it names
        except FileNotFoundError:  # made by private_dir, as ours
            parent = os.path.dirname(parent)
            continue
        if st.st_uid not in (0, euid):
            raise Unsafe("%s is owned by %s: that user could replace %s" % (parent, owner_name(st.st_uid), path))
        if st.st_mode & 0o022 and not st.st_mode & 0o1000:
            raise Unsafe("%s is writable by other users (mode %04o, no sticky bit): they could replace %s"
                         % (parent, st.st_mode & 0o7777, path))
        if parent == os.path.dirname(parent):
            return
        parent = os.path.dirname(parent)


def private_dir(path, mode=0o700, what="directory"):
    """Make ``path`` (and missing parents, with ``mode``) or reuse it: it must then be a real
    directory, ours, not writable by group or others, under ancestors nobody else controls.
    True when it was created. Raises :class:`Unsafe` (a located one-line message) otherwise,
    OSError's message included when it cannot be made (no permission, read-only file system)."""
    path = os.path.abspath(path)
    made = False
    check_ancestors(path)  # before anything is made under them
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        try:
            os.makedirs(os.path.dirname(path), mode=mode, exist_ok=True)
            os.mkdir(path, mode)
            made = True
        except FileExistsError:
            pass  # someone made it meanwhile: judged below like any other
        except OSError as e:
            raise Unsafe("%s %s cannot be created: %s" % (what, path, e.strerror or e)) from None
        st = os.lstat(path)
        if made:
            os.chmod(path, mode)  # mkdir's mode went through the umask
            st = os.lstat(path)
    import stat as S
    why = unsafe_reason(st)
    if why is None and not S.S_ISDIR(st.st_mode):
        why = "is not a directory"
    if why is not None:
        raise Unsafe("%s %s %s: refusing to use it" % (what, path, why))
    if not os.access(path, os.W_OK | os.X_OK):
        raise Unsafe("%s %s is not writable by %s" % (what, path, owner_name(os.geteuid())))
    return made


def open_private(path, flags, mode=0o600, what="file"):
    """``os.open`` that never follows a symlink and accepts only a file of ours that nobody else
    can write; a file it creates gets ``mode``. Returns the fd; raises :class:`Unsafe`."""
    import stat as S
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno == 40:  # ELOOP: the last component is a symlink
            raise Unsafe("%s %s is a symlink: refusing to open it" % (what, path)) from None
        raise
    st = os.fstat(fd)
    why = unsafe_reason(st)
    if why is None and not S.S_ISREG(st.st_mode):
        why = "is not a regular file"
    if why is not None:
        os.close(fd)
        raise Unsafe("%s %s %s: refusing to use it" % (what, path, why))
    return fd


def read_record(path):
    """A process record (``run/NAME.json``) if it can be trusted: ``(record, None)``, ``(None, None)``
    when there is none, ``(None, why)`` when there is one we did not write (not ours, not 0600, a
    symlink, not a JSON object). Such a file is never acted on: its pid is not signalled."""
    try:
        fd = open_private(path, os.O_RDONLY, what="record")
    except FileNotFoundError:
        return None, None
    except Unsafe as e:
        return None, str(e)
    try:
        if os.fstat(fd).st_mode & 0o777 != 0o600:
            return None, "record %s has mode %04o, not 0600: ignored" % (path, os.fstat(fd).st_mode & 0o7777)
        with os.fdopen(fd, "rb") as f:
            fd = None
            rec = json.loads(f.read().decode("utf-8"))
    finally:
        if fd is not None:
            os.close(fd)
    if not isinstance(rec, dict):
        return None, "record %s is not a JSON object: ignored" % path
    return rec, None


# ---- containment: the whole tree of a process, not just its group ------------------------------
# Each process gets a cgroup v2 leaf of its own where the agent can write one (then every
# descendant, setsid or double-forked, stays in it and `cgroup.kill` ends them all), and its shim
# is always a child subreaper (orphans of the tree re-parent to the shim, not to init), which is
# the containment where no cgroup can be had.
CGROUP_DIR = "dynamo-launch"  # under the cgroup v2 mount, beside systemd's slices
PR_SET_CHILD_SUBREAPER = 36
KILL_BOUND = 10.0  # seconds of SIGKILL rounds before a tree that will not die is reported as left


def cgroup2_mount():
    """The mount point of the cgroup v2 hierarchy (unified or hybrid layout), or None."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if right.split()[:1] == ["cgroup2"] and len(fields) > 4 and fields[3] == "/":
                    return fields[4]
    except OSError:
        pass
    return None


def cgroup_base():
    """``(directory, None)`` under which the agent can make one cgroup per process, or ``(None, why)``.

    ``DYNAMO_AGENT_CGROUP`` in the agent's environment overrides: a directory of a cgroup v2
    hierarchy to use (e.g. a delegated subtree), or ``none`` for the subreaper fallback (tests).
    """
    override = os.environ.get("DYNAMO_AGENT_CGROUP")
    if override is not None and override.strip().lower() in ("", "none", "0", "off"):
        return None, "disabled by DYNAMO_AGENT_CGROUP"
    mount = cgroup2_mount()
    if override:
        base = override
    elif mount is None:
        return None, "no cgroup v2 hierarchy mounted"
    else:
        base = os.path.join(mount, CGROUP_DIR)
    try:
        if not os.path.isdir(base):
            os.mkdir(base)
    except OSError as e:
        return None, "cannot create %s: %s" % (base, e.strerror)
    if not (os.access(base, os.W_OK) and os.access(os.path.join(base, "cgroup.procs"), os.W_OK)):
        return None, "%s is not writable" % base
    try:  # memory.current per process where the hierarchy has the controller (unified hosts)
        with open(os.path.join(base, "cgroup.controllers")) as f:
            available = f.read().split()
        for controller in ("memory", "pids"):
            if controller in available:
                with suppress(OSError):
                    write_small(os.path.join(base, "cgroup.subtree_control"), "+" + controller)
    except OSError:
        pass
    return base, None


def write_small(path, text):
    """Write ``text`` to a (cgroup or proc) file in one write; raises OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def enter_cgroup(base, leaf, pid):
    """Make the cgroup ``base/leaf`` and move ``pid`` into it: its path, or raise OSError.

    Called by the shim while the child still waits for its go, so nothing of the tree exists
    outside the cgroup. A leftover leaf of the same name (a shim killed earlier) is reused only
    when empty.
    """
    path = os.path.join(base, leaf)
    for attempt in range(10):
        candidate = path if attempt == 0 else "%s-%d" % (path, attempt)
        try:
            os.mkdir(candidate)
        except FileExistsError:
            if cgroup_members(candidate):
                continue
        write_small(os.path.join(candidate, "cgroup.procs"), str(pid))
        return candidate
    raise OSError(17, "no free cgroup name for %s" % leaf)


def cgroup_members(path):
    """``{pid: start_time}`` of the live processes in the cgroup ``path`` ({} when it is gone)."""
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            pids = [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return {}
    members = {}
    for pid in pids:
        st = proc_stat(pid) if pid > 0 else None  # 0: a member outside our PID namespace
        if st is not None and st[0] not in DEAD:
            members[pid] = st[1]
    return members


_LIBC = []


def libc():
    """The C library through ctypes (loaded once: the fork server loads it for all its shims), or None."""
    if not _LIBC:
        try:
            import ctypes
            _LIBC.append(ctypes.CDLL(None, use_errno=True))
        except (OSError, ImportError):
            _LIBC.append(None)
    return _LIBC[0]


def remove_cgroup(path, timeout=0.5, reaping=False):
    """Remove the (empty) cgroup ``path``; True when it is gone.

    Right after its last member ended the kernel may still answer EBUSY for a moment (a member
    not fully released yet): retried for up to ``timeout`` seconds, reaping our own children when
    ``reaping`` (the shim only: in the agent a wait for any child would take an `exec`'s status).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
        if reaping:
            reap(None)
        time.sleep(0.01)


def sweep_cgroups(base):
    """Remove the empty leaves under ``base`` that shims of this PID namespace left behind (killed
    before they could): only those whose shim is gone, so none that a starting shim just made."""
    prefix = "%d." % os.stat("/proc/self/ns/pid").st_ino
    for leaf in os.listdir(base):
        path = os.path.join(base, leaf)
        if not leaf.startswith(prefix) or not os.path.isdir(path):
            continue
        shim = leaf.rsplit(".", 1)[-1].split("-")[0]
        if shim.isdigit() and proc_stat(int(shim)) is None and not cgroup_members(path):
            with suppress(OSError):
                os.rmdir(path)


def set_subreaper():
    """Make this process the child subreaper of its descendants (prctl); True when it worked."""
    try:
        return libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except AttributeError:  # no ctypes, or no prctl
        return False


def proc_table():
    """``{pid: (ppid, state, start_time)}`` of every process in /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry, "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                table[int(entry)] = (int(fields[1]), fields[0].decode(), int(fields[19]))
            except (OSError, IndexError, ValueError):
                continue
    return table


def descendants(table, roots):
    """``{pid: start_time}`` of the live descendants of ``roots`` (pids) in ``table``, roots excluded."""
    children = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, list(roots)
    while todo:
        for pid in children.get(todo.pop(), ()):
            if pid not in found and pid not in roots:
                todo.append(pid)
                if table[pid][1] not in DEAD:
                    found[pid] = table[pid][2]
    return found


def tree_of(rec, table=None):
    """``{pid: start_time}`` of every live process of the record's tree, its main process included.

    With a cgroup: its members. Without: the descendants of the shim (a subreaper, so orphans of
    the tree are its children) and of the main process; once the shim is gone (killed), orphans
    went to init, so also every process whose environment carries the record's launch id, name and
    generation. Never anything else: what we did not start is not in the tree.
    """
    if rec.get("boot_id") != boot_id():
        return {}
    if rec.get("cgroup"):
        return cgroup_members(rec["cgroup"])
    table = proc_table() if table is None else table

    def running(pid, start):
        return isinstance(pid, int) and pid in table and table[pid][2] == start and table[pid][1] not in DEAD

    shim = running(rec.get("shim_pid"), rec.get("shim_start_time"))
    main = running(rec.get("pid"), rec.get("start_time"))
    roots = [p for p, ok in ((rec.get("shim_pid"), shim), (rec.get("pid"), main)) if ok]
    found = descendants(table, roots)
    if main:
        found[rec["pid"]] = rec["start_time"]
    if (not shim or rec.get("containment") == "group") and rec.get("launch_id"):  # orphans went to init
        for p in scan(rec["launch_id"]):
            if p["name"] == rec.get("name") and str(p["generation"]) == str(rec.get("generation")):
                found[p["pid"]] = p["start_time"]
    found.pop(rec.get("shim_pid"), None)
    return found


def signal_tree(rec, sig, members=None, skip_group=None):
    """Send ``sig`` to every process of the record's tree; the pids it went to (sorted).

    SIGKILL to a cgroup goes through ``cgroup.kill`` (Linux >= 5.14: atomic, a forking process
    cannot escape it) and process by process as well (older kernels, and the answer names them).
    Members of the process group ``skip_group`` are left out (a killpg reached them already: a
    second TERM makes some programs skip their clean shutdown).
    """
    members = tree_of(rec) if members is None else members
    if skip_group is not None:
        members = {p: t for p, t in members.items() if pgid_of(p) != skip_group}
    if sig == signal.SIGKILL and rec.get("cgroup") and members:
        with suppress(OSError):
            write_small(os.path.join(rec["cgroup"], "cgroup.kill"), "1")
    sent = []
    for pid, start in sorted(members.items()):
        if is_running(pid, start):  # no pid-reuse kills
            try:
                os.kill(pid, sig)
                sent.append(pid)
            except OSError:
                pass
    return sent


def pgid_of(pid):
    """The process group of ``pid``, or None when it is gone."""
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def tree_usage(rec, members):
    """``{"procs", "rss_bytes", "memory_bytes"}`` of a tree: RSS summed over its processes (shared
    pages counted once per process), and the cgroup's ``memory.current`` where it has one."""
    page, rss = os.sysconf("SC_PAGE_SIZE"), 0
    for pid in members:
        try:
            with open("/proc/%d/statm" % pid) as f:
                rss += int(f.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
    memory = None
    if rec.get("cgroup"):
        try:
            with open(os.path.join(rec["cgroup"], "memory.current")) as f:
                memory = int(f.read())
        except (OSError, ValueError):
            pass
    return {"procs": len(members), "rss_bytes": rss, "memory_bytes": memory}


# ---- the shim: runs detached, one per spawned process ------------------------------------------
class LogWriter:
    """Appends a child's output to its log, rotating by size (name.log -> name.log.1 ...)."""

    def __init__(self, path, max_bytes, backups):
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        private_dir(os.path.dirname(path), 0o750, "log directory")
        self._open(os.O_APPEND)

    def _open(self, flags):
        # 0640 in a 0750 directory: a process that prints its token leaks it to no other user.
        self.fd = open_private(self.path, os.O_WRONLY | os.O_CREAT | flags, 0o640, "log")
        st = os.fstat(self.fd)
        if st.st_mode & 0o037:  # a log of an older version (0644): not readable by others any more
            os.fchmod(self.fd, 0o640)
        self.size, self.mid_line = st.st_size, False

    def write(self, data):
        """Append ``data``; rotate first when it would take the file past ``max_bytes``."""
        if 0 < self.max_bytes < self.size + len(data) and self.size > 0:
            nl = data.find(b"\n") if self.mid_line else -1
            if nl >= 0:  # finish the line the last chunk began, so lines stay whole
                self._write(data[:nl + 1])
                data = data[nl + 1:]
            self._rotate()
        self._write(data)

    def _write(self, data):
        if not data:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
        except OSError:
            pass  # disk full or the like: keep draining the pipe so the child never blocks
        self.size += len(data)
        self.mid_line = not data.endswith(b"\n")

    def _rotate(self):
        os.close(self.fd)
        try:
            if self.backups == 0:
                return self._open(os.O_TRUNC)
            for i in range(self.backups - 1, 0, -1):
                if os.path.exists("%s.%d" % (self.path, i)):
                    os.rename("%s.%d" % (self.path, i), "%s.%d" % (self.path, i + 1))
            os.rename(self.path, self.path + ".1")
        except OSError:
            pass
        self._open(os.O_APPEND)


class PlainText:
    """Strips terminal escape sequences (colours, cursor moves, titles) from a child's output on
    its way to ``log``: engines colour their logs even into a file. A sequence cut in two by a
    read is carried over to the next chunk."""

    _ESC = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[ -/]+[0-~]|[@-Z\\-_])")
    _OPEN = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?|[ -/]+)?")  # begun, not finished

    def __init__(self, log):
        self.log, self.carry = log, b""

    def write(self, data):
        data, self.carry = self.carry + data, b""
        esc = data.rfind(b"\x1b", max(0, len(data) - 256))
        if esc >= 0 and self._OPEN.fullmatch(data, esc):
            data, self.carry = data[:esc], data[esc:]
        self.log.write(self._ESC.sub(b"", data) if b"\x1b" in data else data)

    def start(self, line):
        """Begin a copy's output with ``line`` on a line of its own (an appended log shows where each copy began)."""
        self.log.write((b"\n" if ends_mid_line(self.log) else b"") + line.encode("utf-8", "replace") + b"\n")


def ends_mid_line(log):
    """True when the log file so far does not end with a newline (the last copy was cut off)."""
    if log.size == 0:
        return False
    try:
        with open(log.path, "rb") as f:  # (the log's own descriptor is write-only)
            f.seek(log.size - 1)
            return f.read(1) not in (b"\n", b"")
    except OSError:
        return False


def read_fd(fd):
    """Everything on ``fd`` until EOF (not through ``sys.stdin``: a forked copy's buffer is stale)."""
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def read_answer(fd, deadline):
    """The shim's one JSON answer line on ``fd``, or None if none came by ``deadline`` (monotonic)."""
    out = b""
    while b"\n" not in out and select.select([fd], [], [], max(0, deadline - time.monotonic()))[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out += chunk
    return json.loads(out.split(b"\n", 1)[0].decode()) if b"\n" in out else None


class ForkServer:
    """Starts shims by forking a single-threaded copy of the agent, made before any thread exists.

    Forking the threaded agent is unsafe (a lock another thread holds stays locked in the child),
    and a fresh interpreter per shim costs ~45 ms of CPU, the larger part of a spawn. A process
    forked before the threads exist can fork again safely for as long as it lives. For each
    spawn the agent passes it two pipe ends over a Unix socket (SCM_RIGHTS): the spec to read and
    the answer to write. Its child takes them as fd 0 and 1 and runs :func:`shim_main`, exactly as
    the fresh interpreter would. It ends when the agent does (EOF on the socket).
    """

    def __init__(self):
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            try:
                self.sock.close()
                self._serve(theirs)
            finally:
                os._exit(0)
        theirs.close()
        self.lock = threading.Lock()

    @staticmethod
    def _serve(sock):
        keep = sock.fileno()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, keep)  # the SSH channel's pipes and anything else of the agent
        os.closerange(keep + 1, 65536)
        with suppress(OSError):
            with open("/proc/self/comm", "w") as f:
                f.write("dl-agent-forks")  # ps tells it from the agent
        libc()  # once here, not in every shim (it makes them subreapers)
        while True:
            try:
                _, fds, _, _ = socket.recv_fds(sock, 16, 2)
            except OSError:
                return
            if len(fds) != 2:
                return  # EOF: the agent is gone
            pid = os.fork()
            if pid == 0:
                try:
                    sock.close()
                    with suppress(OSError):
                        with open("/proc/self/comm", "w") as f:
                            f.write("dl-shim")
                    os.setsid()
                    os.dup2(fds[0], 0)
                    os.dup2(fds[1], 1)
                    for fd in fds:
                        os.close(fd)
                    shim_main()
                finally:
                    os._exit(1)
            for fd in fds:
                os.close(fd)
            with suppress(ChildProcessError):
                os.waitpid(pid, 0)  # it forks the shim and exits at once (double fork)

    def start(self, spec):
        """Hand ``spec`` to a new shim; the pipe its one answer line arrives on (None: server gone)."""
        spec_r, spec_w = os.pipe()
        answer_r, answer_w = os.pipe()
        try:
            with self.lock:
                socket.send_fds(self.sock, [b"s"], [spec_r, answer_w])
        except OSError:
            for fd in (spec_r, spec_w, answer_r, answer_w):
                os.close(fd)
            return None
        os.close(spec_r)
        os.close(answer_w)
        with os.fdopen(spec_w, "wb") as f, suppress(BrokenPipeError):
            f.write(json.dumps(spec).encode())  # env travels here, never on a command line
        return answer_r


def shim_main():
    """``agent.py shim``: read a spawn spec on stdin, detach, run the process, record its end.

    The process the agent starts forks the real shim and exits at once (double fork), so the shim
    belongs to init, not to the agent. The shim answers once on the stdout pipe it inherited:
    ``{"ok": true, "pid", ...}`` when the program runs, else ``{"ok": false, "error"}``.
    """
    spec = json.loads(read_fd(0).decode("utf-8"))
    if os.fork():
        os._exit(0)
    os.setsid()
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # a closing terminal, a group kill, a stray killall
    report = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)  # nothing of the agent's pipes may stay open here
    answered = []

    def answer(msg):
        if not answered:
            answered.append(msg)
            try:
                os.write(report, (json.dumps(msg) + "\n").encode())
            except OSError:
                pass  # the agent went away; the record tells the next one
            os.close(report)

    try:
        run_shim(spec, answer)
    except BaseException as e:  # never leave the agent waiting without a word
        answer({"ok": False, "error": "shim: %s: %s" % (type(e).__name__, one_line(e))})
    os._exit(0)


def run_shim(spec, answer):
    """Fork the child, record it, release it, copy its output, record its exit."""
    name, argv, run_file = spec["name"], spec["argv"], spec["run_file"]
    try:
        log = PlainText(LogWriter(spec["log_file"], spec["log_max_bytes"], spec["log_backups"]))
    except Unsafe as e:
        return answer({"ok": False, "error": str(e)})
    except OSError as e:
        return answer({"ok": False, "error": "cannot open log %s: %s" % (spec["log_file"], e.strerror)})
    log.start("----- dynamo-launch: %s generation %s starting at %s (launch %s) -----" % (
        name, spec["generation"], time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), spec["launch_id"]))
    env = dict(os.environ)
    env.update(spec["env"])
    env["PATH"] = child_path(env.get("PATH"))
    env.update(zip(LAUNCH_VARS, (spec["launch_id"], name, str(spec["generation"]))))
    wake_r, wake_w = os.pipe()  # SIGCHLD wakes the copy loop through it: an exit is seen at once
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    out_r, out_w = os.pipe()  # os.pipe() fds are close-on-exec: only 0-2 reach the program
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe()  # closed by a successful exec; carries the error otherwise
    subreaper = set_subreaper()  # before the fork: orphans of the tree come to us, not to init
    pid = os.fork()
    if pid == 0:
        try:
            child(argv, env, spec["cwd"], out_w, go_r, err_w)
        finally:
            os._exit(127)
    for fd in (out_w, go_r, err_w):
        os.close(fd)
    record = {"name": name, "pid": pid, "pgid": pid, "start_time": proc_stat(pid)[1], "boot_id": boot_id(),
              "launch_id": spec["launch_id"], "generation": spec["generation"], "argv": argv,
              "log_file": spec["log_file"], "shim_pid": os.getpid(), "shim_start_time": proc_stat(os.getpid())[1],
              "started_at": time.time(), "containment": "subreaper" if subreaper else "group",
              "leftover_grace": spec.get("leftover_grace", 1.0)}
    if spec.get("cgroup_base"):
        # Named so that hosts sharing one hierarchy (PID namespaces, the test bed) never collide.
        leaf = "%d.%s.g%s.%d" % (os.stat("/proc/self/ns/pid").st_ino, name, spec["generation"], os.getpid())
        try:
            record["cgroup"] = enter_cgroup(spec["cgroup_base"], leaf, pid)  # the child still waits: nothing escaped
            record["containment"] = "cgroup"
        except OSError as e:
            record["cgroup_error"] = "%s: %s" % (leaf, e.strerror or e)
    try:
        write_json_atomic(run_file, record)  # on disk before the program may run
    except OSError as e:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        if record.get("cgroup"):
            remove_cgroup(record["cgroup"], reaping=True)
        return answer({"ok": False, "error": "cannot write %s: %s" % (run_file, e.strerror)})
    os.write(go_w, b"g")
    os.close(go_w)
    error = chunk = os.read(err_r, 4096)  # EOF once exec succeeded, or the child's error
    while chunk:
        chunk = os.read(err_r, 4096)
        error += chunk
    if not error:
        # started_at is the host's clock: Ray's node start times on this host compare with it
        answer({k: record.get(k) for k in ("pid", "pgid", "start_time", "boot_id", "shim_pid", "shim_start_time",
                                           "started_at", "containment", "cgroup")})
    status = copy_output(pid, out_r, wake_r, log)
    ended = time.time()
    # The main process is gone; what it started must go too before its exit is recorded (and the
    # agent reports it): a child holding the port or a GPU would break the next copy.
    killed, left = end_tree(record, out_r, wake_r, log)
    record["exit"] = {"code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                      "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None, "at": ended,
                      "killed": killed[:64], "killed_count": len(killed), "left": left[:64],
                      "tree_empty_at": time.time() if not left else None}
    if error:
        record["exit"]["error"] = one_line(error.decode("utf-8", "replace"))
    if record.get("cgroup") and not left:
        remove_cgroup(record["cgroup"], reaping=True)
    try:
        current, _ = read_record(run_file)
        if current and current.get("pid") == pid and current.get("start_time") == record["start_time"]:
            write_json_atomic(run_file, record)  # not if the name was forgotten and reused meanwhile
    except (OSError, ValueError):
        pass
    if error:
        answer({"ok": False, "error": record["exit"]["error"]})


def child(argv, env, cwd, out_w, go_r, err_w):
    """In the forked child: detach, wait for the shim's go, exec; report a failure on ``err_w``."""
    os.setsid()  # own session and process group (pgid == pid): killpg reaches its descendants
    signal.set_wakeup_fd(-1)
    for sig in range(1, signal.NSIG):  # ignored signals (SIGPIPE by Python, SIGHUP...) survive exec
        with suppress(OSError, ValueError, RuntimeError):
            signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(out_w, 1)
    os.dup2(out_w, 2)
    if os.read(go_r, 1) != b"g":
        os._exit(1)  # the shim died before the record was written: never run unrecorded
    try:
        if cwd:
            os.chdir(cwd)
    except OSError as e:
        os.write(err_w, ("cannot chdir to %r: %s" % (cwd, e.strerror)).encode())
        os._exit(126)
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        os.write(err_w, ("cannot run %r: %s" % (argv[0], e.strerror or e)).encode())
        os._exit(127 if isinstance(e, FileNotFoundError) else 126)


def reap(pid):
    """Reap every exited child: the main one and (as a subreaper) adopted orphans; the main one's
    wait status, or None while it runs."""
    status = None
    while True:
        try:
            done, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status
        if done == 0:
            return status
        if done == pid:
            status = st


def copy_output(pid, out_r, wake_r, log):
    """Copy the child's output into ``log`` until it exits, then drain the pipe; its wait status."""
    fds = [out_r, wake_r]
    while True:
        status = reap(pid)
        if status is not None:
            break
        ready = select.select(fds, [], [], 1.0)[0]  # the timeout is only a safety net
        if wake_r in ready:
            with suppress(BlockingIOError):
                os.read(wake_r, 512)
        if out_r in ready:
            data = os.read(out_r, 65536)
            if data:
                log.write(data)
            else:
                fds.remove(out_r)  # EOF: only the exit remains
    # What the child wrote before it exited is in the pipe: take it all. Never block (a
    # descendant may hold the pipe open) and never loop on one that keeps writing.
    os.set_blocking(out_r, False)
    for _ in range(1024):
        try:
            data = os.read(out_r, 65536)
        except OSError:
            break
        if not data:
            break
        log.write(data)
    return status


def end_tree(record, out_r, wake_r, log):
    """After the main process ended: TERM what is left of its tree, KILL it after the record's
    ``leftover_grace`` seconds, and again until none is left (at most KILL_BOUND seconds more).

    Their output still goes to the log meanwhile. Returns ``(killed, left)``: the pids that were
    still there (sorted) and those that even SIGKILL did not end in time (a process stuck in the
    kernel, e.g. a GPU driver's teardown).
    """
    members = tree_of(record)
    if not members:
        return [], []
    killed = set(members)
    signal_tree(record, signal.SIGTERM, members)
    kill_at = time.monotonic() + float(record.get("leftover_grace") or 0)
    give_up = kill_at + KILL_BOUND
    fds = [out_r, wake_r]
    while True:
        reap(None)
        ready = select.select(fds, [], [], 0.02)[0]  # a SIGCHLD (wake_r) ends the wait early
        if wake_r in ready:
            with suppress(BlockingIOError):
                os.read(wake_r, 512)
        if out_r in ready:
            try:
                data = os.read(out_r, 65536)
            except BlockingIOError:
                data = None
            if data:
                log.write(data)
            elif data is not None:
                fds.remove(out_r)  # EOF: nobody of the tree holds the pipe any more
        members = tree_of(record)
        killed.update(members)  # a fork during the grace counts too
        if not members:
            return sorted(killed), []
        now = time.monotonic()
        if now >= give_up:
            return sorted(killed), sorted(members)
        if now >= kill_at:
            signal_tree(record, signal.SIGKILL, members)


# ---- the agent ---------------------------------------------------------------------------------
class Watcher:
    """Turns the end of spawned and adopted processes into ``exit`` events.

    Waits on the shim while it lives (it exits right after writing the exit into the record),
    else on the child itself: with pidfds and poll() where the kernel has them, else by looking
    at /proc every 0.2 s. Only the watcher thread touches the pidfds.
    """

    def __init__(self, agent):
        self.agent, self.lock, self.entries = agent, threading.Lock(), {}
        self.signalled = set()  # (pid, start_time) the agent sent TERM/KILL to
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        threading.Thread(target=self.run, name="watcher", daemon=True).start()

    def add(self, rec):
        """Watch the process of record ``rec`` (a no-op when it is watched already)."""
        key = (rec["name"], rec.get("pid"), rec.get("start_time"))
        candidates = [(rec.get("shim_pid"), rec.get("shim_start_time")), key[1:]]
        entry = {"key": key, "rec": rec, "fd": None, "target": None,
                 "candidates": candidates if rec.get("boot_id") == boot_id() else []}
        with self.lock:
            self.entries.setdefault(key, entry)
        self.wake()

    def wait_reported(self, name, timeout=1.0):
        """Give the exit of an earlier process of ``name`` time to go out before its record goes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not any(k[0] == name for k in self.entries):
                    return
            self.wake()
            time.sleep(0.005)

    def wake(self):
        with suppress(BlockingIOError):  # full: a wake-up is pending anyway
            os.write(self.wake_w, b"x")

    def _arm(self, e):
        """Point ``e`` at the first of (shim, child) still running; False when none is."""
        if e["fd"] is not None:
            os.close(e["fd"])
            e["fd"] = None
        while e["candidates"]:
            pid, start = e["candidates"].pop(0)
            if not is_running(pid, start):
                continue
            fd = None
            if self.agent.pidfd:
                try:
                    fd = os.pidfd_open(pid)
                except OSError:
                    continue
                if not is_running(pid, start):  # exited (or pid reused) before the pidfd
                    os.close(fd)
                    continue
            e["fd"], e["target"] = fd, (pid, start)
            return True
        return False

    def run(self):
        while True:
            try:
                self._round()
            except Exception as e:  # keep watching whatever happens
                note("watcher: %s: %s" % (type(e).__name__, one_line(e)))
                time.sleep(0.2)

    def _round(self):
        with self.lock:
            entries = list(self.entries.values())
        # New entries get their target now; those with nothing left running are reported.
        armed = [e for e in entries if e["target"] is not None or self._arm(e) or self._finish(e)]
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        for e in armed:
            if e["fd"] is not None:
                poller.register(e["fd"], select.POLLIN)
        polling = any(e["fd"] is None for e in armed)
        ready = {fd for fd, _ in poller.poll(200 if polling else None)}
        with suppress(BlockingIOError):
            os.read(self.wake_r, 4096)
        for e in armed:
            gone = e["fd"] in ready if e["fd"] is not None else not is_running(*e["target"])
            if gone and not self._arm(e):
                self._finish(e)

    def _finish(self, e):
        """Report the exit of ``e``'s process, with the code/signal its shim recorded (if any)."""
        with self.lock:
            self.entries.pop(e["key"], None)
        name, pid, start_time = e["key"]
        try:
            rec = read_record(self.agent.run_file(name))[0] or {}
        except (OSError, ValueError):
            rec = {}
        ours = (rec.get("pid"), rec.get("start_time")) == (pid, start_time)
        ended = rec.get("exit") if ours else None
        if ended is None:  # the shim was killed: its code is unknown, and its tree is ours to end
            ended = {"code": None, "signal": None, "at": time.time()}
            if ours:  # (a record replaced meanwhile: the new spawn ended the old tree before it started)
                killed, left = end_orphaned_tree(rec)
                ended.update(killed=killed[:64], killed_count=len(killed), left=left[:64])
        last = ""
        if ours and rec.get("log_file"):  # what it said last, read before a restart appends more
            with suppress(Refused):
                last = tail_text(rec["log_file"], EXIT_LINES, EXIT_LINES_LIMIT)
        self.agent.send({"event": "exit", "name": name, "pid": pid, "generation": e["rec"].get("generation"),
                         "last_lines": last,
                         "launch_id": e["rec"].get("launch_id"), "code": ended.get("code"),
                         "signal": ended.get("signal"), "at": ended.get("at"),
                         "by_signal_from_us": (pid, start_time) in self.signalled,
                         "killed": ended.get("killed", []), "killed_count": ended.get("killed_count", 0),
                         "left": ended.get("left", [])})
        return False


def end_orphaned_tree(rec, timeout=2.0):
    """KILL what is left of the tree of ``rec`` when no shim does it (the shim itself was killed):
    ``(killed, left)`` pids. Bounded by ``timeout``: the watcher thread runs this."""
    members = tree_of(rec)
    killed = set(members)
    deadline = time.monotonic() + timeout
    while members and time.monotonic() < deadline:
        signal_tree(rec, signal.SIGKILL, members)
        time.sleep(0.01)
        members = tree_of(rec)
        killed.update(members)
    if not members and rec.get("cgroup"):
        remove_cgroup(rec["cgroup"], timeout=0.1)
    return sorted(killed), sorted(members)


def wait_child(proc, timeout, pidfd):
    """``proc.wait(timeout)``, told the moment ``proc`` ends: Popen's own wait with a timeout looks
    at it after 1, 2, 4 … 50 ms, so a 90 ms preflight was answered up to 50 ms late. A pidfd
    (``pidfd``: where the system has them) becomes readable when the child ends; without one,
    Popen's wait as before. ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
    if pidfd and proc.returncode is None:
        try:
            fd = os.pidfd_open(proc.pid)
        except OSError:
            fd = None
        if fd is not None:
            try:
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                if not poller.poll(max(0, timeout) * 1000):
                    raise subprocess.TimeoutExpired(proc.args, timeout)
            finally:
                os.close(fd)
    return proc.wait(timeout)


def pidfd_works():
    """True when os.pidfd_open works here (Python >= 3.9, Linux >= 5.3)."""
    if os.environ.get("DYNAMO_AGENT_NO_PIDFD") or not hasattr(os, "pidfd_open"):
        return False  # the variable forces the /proc fallback (tests)
    try:
        os.close(os.pidfd_open(os.getpid()))
        return True
    except OSError:
        return False


class Agent:
    """Serves requests, one thread each, so a slow ``exec`` blocks nothing else."""

    def __init__(self, state_dir, out, forks=None):
        self.forks = forks  # a ForkServer made before any thread, or None
        self.state_dir = os.path.abspath(state_dir)
        self.run_dir = os.path.join(self.state_dir, "run")
        # Refused (say why to every request) rather than serve from a directory another user controls.
        self.unsafe = None
        try:
            private_dir(self.state_dir, 0o700, "state_dir")
            private_dir(self.run_dir, 0o700, "run directory")
        except Unsafe as e:
            self.unsafe = str(e)
        self.cgroup, self.cgroup_note = cgroup_base()  # None: subreaper containment only
        if self.cgroup is None:
            note("no cgroup per process (%s): containment by subreaper shims" % self.cgroup_note)
        else:
            with suppress(OSError):
                sweep_cgroups(self.cgroup)
        self.out, self.out_lock = out, threading.Lock()
        self.names_lock, self.name_locks = threading.Lock(), {}
        self.execs = set()  # running `exec` commands, killed when the agent ends
        self.pidfd = pidfd_works()
        self.watcher = Watcher(self)

    def send(self, msg):
        """Write one protocol line; the daemon being gone ends the agent."""
        line = (json.dumps(msg, separators=(",", ":")) + "\n").encode()
        with self.out_lock:
            try:
                self.out.write(line)
                self.out.flush()
            except (OSError, ValueError):
                self.shutdown()

    def shutdown(self):
        """Leave: spawned processes run on (they are detached); `exec` commands do not."""
        for proc in list(self.execs):
            kill_group(proc.pid, signal.SIGKILL)
        os._exit(0)

    def handle(self, line):
        """Answer one request line; never raises."""
        try:
            req = json.loads(line.decode("utf-8"))
        except ValueError as e:
            req = Refused("bad-request", "bad JSON: %s" % e)
        rid = req.get("id") if isinstance(req, dict) else None
        try:
            if not isinstance(req, dict):
                raise req if isinstance(req, Refused) else Refused("bad-request", "a request is a JSON object")
            op = req.get("op")
            handler = getattr(self, "op_" + op, None) if isinstance(op, str) and op.isidentifier() else None
            if handler is None:
                raise Refused("bad-request", "unknown op %r" % (op,))
            if self.unsafe is not None:
                raise Refused("unsafe", self.unsafe)
            result = handler(req)
            then = None
            if isinstance(result, After):
                result, then = result.result, result.then
            self.send({"id": rid, "ok": True, "result": result})
            return then and then()
        except Refused as e:
            kind, error = e.kind, str(e)
        except Unsafe as e:
            kind, error = "unsafe", str(e)
        except Exception as e:
            note("internal error: %s: %s" % (type(e).__name__, one_line(e)))
            kind, error = "internal", "%s: %s" % (type(e).__name__, e)
        self.send({"id": rid, "ok": False, "error": one_line(error), "kind": kind})

    @contextmanager
    def name_lock(self, name):
        """Serialize spawn/forget of ``name``: across threads, and across agents (flock on run/NAME.lock)."""
        with self.names_lock:
            lock = self.name_locks.setdefault(name, threading.Lock())
        with lock:
            self.ensure_run_dir()
            fd = open_private(os.path.join(self.run_dir, name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600, "lock file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def run_file(self, name):
        return os.path.join(self.run_dir, name + ".json")

    def ensure_run_dir(self):
        """Recreate ``run/`` if it was deleted under us; True when it had to."""
        if private_dir(self.run_dir, 0o700, "run directory"):
            note("recreated %s (it had been removed)" % self.run_dir)
            return True
        return False

    def record(self, name):
        """The trusted record of ``name`` or None; one we did not write is noted and taken as none."""
        try:
            rec, why = read_record(self.run_file(name))
        except (OSError, ValueError) as e:
            raise Refused("internal", "record of %s unreadable: %s" % (name, e))
        if why is not None:
            note(why)
        return rec

    def replaceable(self, name, verb):
        """Check that the record of ``name`` may go: refuse while its process runs."""
        rec = self.record(name)
        if rec is None:
            return None
        if record_alive(rec):  # never two copies
            raise Refused(verb, "%s is already running as pid %s" % (name, rec.get("pid")))
        # Dead child, shim still ending its tree (TERM, the grace, KILL) and writing its exit.
        deadline = time.monotonic() + 3.0 + float(rec.get("leftover_grace") or 0) + KILL_BOUND
        while "exit" not in rec and is_running(rec.get("shim_pid"), rec.get("shim_start_time")):
            if time.monotonic() > deadline:
                raise Refused(verb, "the shim (pid %s) of %s is still finishing" % (rec.get("shim_pid"), name))
            time.sleep(0.01)
            rec = self.record(name) or {"exit": None}
        if rec.get("pid") is not None and (rec.get("exit") is None or rec["exit"].get("left")):
            # No shim ended this tree (killed), or it could not: nothing of it may outlive the name.
            _, left = end_orphaned_tree(rec, timeout=5.0)
            if left:
                raise Refused(verb, "%s: %d process(es) of its previous run will not die (pids %s)"
                              % (name, len(left), " ".join(map(str, left[:8]))))
        self.watcher.wait_reported(name)
        return rec

    # -- ops --
    def op_hello(self, req):
        return {"boot_id": boot_id(), "hostname": socket.gethostname(), "pid": os.getpid(),
                "python": sys.version.split()[0], "executable": sys.executable, "pidfd": self.pidfd,
                "time": time.time(), "version": VERSION, "state_dir": self.state_dir,
                "containment": "cgroup" if self.cgroup else "subreaper", "cgroup": self.cgroup,
                "cgroup_note": self.cgroup_note}

    def op_ping(self, req):
        return {"time": time.time()}

    def op_spawn(self, req):
        name = arg_name(req)
        spec = {"name": name, "argv": arg_argv(req), "env": arg_env(req), "cwd": arg_path(req, "cwd", None),
                "log_file": arg_path(req, "log_file", os.path.join(self.state_dir, "logs", name + ".log")),
                "launch_id": arg(req, "launch_id", str), "generation": arg(req, "generation", int, 0),
                "log_max_bytes": arg(req, "log_max_bytes", int, 64 << 20),
                "log_backups": arg(req, "log_backups", int, 3), "run_file": self.run_file(name),
                "leftover_grace": float(arg(req, "leftover_grace", (int, float), 1.0)), "cgroup_base": self.cgroup}
        if not spec["launch_id"] or spec["log_max_bytes"] < 0 or not 0 <= spec["log_backups"] <= 1000:
            raise Refused("bad-request", "need a launch_id, log_max_bytes >= 0 and 0 <= log_backups <= 1000")
        if not 0 <= spec["leftover_grace"] <= 3600:
            raise Refused("bad-request", "need 0 <= leftover_grace <= 3600")
        created = [self.run_dir] if self.ensure_run_dir() else []
        try:  # the log's directory too (deleted with the state directory's contents, say)
            if private_dir(os.path.dirname(spec["log_file"]), 0o750, "log directory"):
                created.append(os.path.dirname(spec["log_file"]))
                note("recreated %s (it had been removed)" % os.path.dirname(spec["log_file"]))
            # The default working directory (the plan's work_dir) is made private like the rest:
            # `python -m` puts it first on sys.path.
            if spec["cwd"] == os.path.join(self.state_dir, "work") and private_dir(spec["cwd"], 0o700,
                                                                                   "working directory"):
                created.append(spec["cwd"])
            self.write_tls_files(arg_files(req))
        except Unsafe as e:
            raise Refused("spawn-failed", "%s: %s" % (name, e))
        with self.name_lock(name):
            self.replaceable(name, "exists")
            if "TMPDIR" not in spec["env"]:  # the operator's own TMPDIR wins
                spec["env"]["TMPDIR"] = self.node_tmp(name)
                # Ray keeps its session (and its sockets, whose paths must stay short) where
                # `ray start`, the Ray executor's leader and `ray status` all look for it.
                spec["env"].setdefault("RAY_TMPDIR", os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp")
            msg = self.start_shim(spec)
        if "pid" not in msg:
            raise Refused("spawn-failed", "%s: %s" % (name, msg.get("error")))
        rec = dict(msg, name=name, launch_id=spec["launch_id"], generation=spec["generation"])
        result = {k: msg.get(k) for k in ("pid", "pgid", "start_time", "boot_id", "containment", "cgroup")}
        result["created"] = created
        return After(result, lambda: self.watcher.add(rec))

    def node_tmp(self, name):
        """``<state_dir>/tmp``, private, as the TMPDIR of this node's processes: what engines leave
        in their temp directory stays out of /tmp. The logging configs Dynamo writes there at
        every start and never removes (``tmp*.json``) go once they are 10 minutes old; caches
        (torch inductor's) stay, so a restart is not slower."""
        tmp = os.path.join(self.state_dir, "tmp")
        try:
            private_dir(tmp, 0o700, "temp directory")
        except Unsafe as e:
            raise Refused("spawn-failed", "%s: %s" % (name, e))
        except OSError as e:
            raise Refused("spawn-failed", "%s: cannot make %s: %s" % (name, tmp, e.strerror or e))
        old = time.time() - TMP_JSON_AGE
        with suppress(OSError):
            for entry in os.scandir(tmp):
                with suppress(OSError):
                    if entry.name.startswith("tmp") and entry.name.endswith(".json") \
                            and entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < old:
                        os.unlink(entry.path)
        return tmp

    def write_tls_files(self, files):
        """Write the TLS files a process needs (CA, certificate, key: from the head's copies) into
        ``<state_dir>/tls`` (0700), each 0600, replaced atomically: a file or symlink someone
        planted there is never followed, and a process never reads a half-written file."""
        if not files:
            return
        directory = os.path.join(self.state_dir, "tls")
        private_dir(directory, 0o700, "TLS directory")
        for name, content in sorted(files.items()):
            path = os.path.join(directory, name)
            tmp = "%s.tmp.%d.%d" % (path, os.getpid(), threading.get_ident())
            fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, "TLS file")
            try:
                os.write(fd, content.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)

    def start_shim(self, spec, timeout=30.0):
        """Start the detached shim through the fork server, or (without one) a fresh interpreter."""
        answer_fd = self.forks.start(spec) if self.forks is not None else None
        if answer_fd is None:
            return self.start_shim_interpreter(spec, timeout)
        try:
            answer = read_answer(answer_fd, time.monotonic() + timeout)
        finally:
            os.close(answer_fd)
        return answer if answer is not None else {"error": "the shim gave no answer"}

    def start_shim_interpreter(self, spec, timeout=30.0):
        """Start the detached shim in a fresh interpreter, as forking this threaded process is unsafe."""
        env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}  # scans must not find shims
        proc = subprocess.Popen([sys.executable or "python3", "-I", "-S", "-c", SHIM_BOOT, AGENT_FILE], cwd="/", env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                close_fds=True, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            with suppress(BrokenPipeError):
                proc.stdin.write(json.dumps(spec).encode())  # env travels here, never on a command line
            with suppress(BrokenPipeError):
                proc.stdin.close()
            wait_child(proc, timeout, self.pidfd)  # the intermediate process exits right after forking the shim
            answer = read_answer(proc.stdout.fileno(), deadline)
        finally:
            proc.stdout.close()
        if answer is None:
            return {"error": "the shim gave no answer (exit status %s)" % proc.returncode}
        return answer

    def op_list(self, req):
        records, table = [], []
        try:
            names = sorted(os.listdir(self.run_dir))
        except FileNotFoundError:  # removed under us: no records (the next spawn recreates it)
            names = []
        for fn in names:
            if fn.endswith(".json"):  # not the temp files of an atomic write
                try:
                    rec, why = read_record(os.path.join(self.run_dir, fn))
                    if rec is None:  # not ours (or gone meanwhile): reported, never acted on
                        if why is not None:
                            records.append({"name": fn[:-5], "alive": False, "untrusted": why})
                        continue
                    if rec.get("name") != fn[:-5]:
                        records.append({"name": fn[:-5], "alive": False,
                                        "untrusted": "record %s names %r: ignored" % (fn, rec.get("name"))})
                        continue
                    rec["alive"] = record_alive(rec)
                    ended = rec.get("exit")
                    if rec["alive"] or ended is None or ended.get("left"):  # else its shim saw it empty
                        if not table and not rec.get("cgroup"):
                            table.append(proc_table())  # one /proc walk for all records
                        members = tree_of(rec, table[0] if table else None)
                    else:
                        members = {}
                    rec["tree"] = tree_usage(rec, members)
                except (OSError, ValueError, TypeError, AttributeError) as e:
                    rec = {"name": fn[:-5], "alive": False, "error": "unreadable: %s" % one_line(e)}
                records.append(rec)
        return records

    def op_watch(self, req):
        name = arg_name(req)
        rec = self.record(name)
        if rec is None:
            raise Refused("not-found", "no record of %s" % name)
        return After({"alive": record_alive(rec)}, lambda: self.watcher.add(rec))  # dead: exit event at once

    def op_signal(self, req):
        name = arg_name(req)
        pid, start_time, sig = arg(req, "pid", int), arg(req, "start_time", int), arg_signal(req)
        try:
            rec = self.record(name)
        except Refused:
            rec = None
        # The tree is taken before anything is sent, so the answer names every process the signal
        # reached, those that died of the killpg at once included.
        ours = rec is not None and (rec.get("pid"), rec.get("start_time")) == (pid, start_time)
        members = tree_of(rec) if ours else {}
        sent, group = [], None
        stat = proc_stat(pid) if pid > 0 and owned_by_us(pid) else None
        if stat is not None and stat[1] == start_time:  # else gone, or the pid is someone else's now
            self.watcher.signalled.add((pid, start_time))
            if kill_group(pid, sig):
                sent.append(pid)
                group = pid
        if ours:
            # The whole tree, even when the main process is gone: setsid'd or double-forked
            # descendants are in no group of the main pid's.
            if group is not None:
                grouped = {p for p, t in members.items() if pgid_of(p) in (group, None)}
                sent.extend(grouped)  # (None: it died of the killpg already)
                members = {p: t for p, t in members.items() if p not in grouped}
            sent.extend(signal_tree(rec, sig, members))
        sent = sorted(set(sent))
        return {"sent": bool(sent), "pids": sent[:64], "count": len(sent)}

    def op_scan(self, req):
        return scan(arg(req, "launch_id", str))

    def op_kill_scan(self, req):
        sig, exclude = arg_signal(req), arg(req, "exclude", list, [])
        found = [p for p in scan(arg(req, "launch_id", str)) if p["pid"] not in exclude]
        for p in found:
            p["sent"] = False
            stat = proc_stat(p["pid"])
            if stat is not None and stat[1] == p["start_time"]:  # still the one scanned
                self.watcher.signalled.add((p["pid"], p["start_time"]))
                try:
                    os.kill(p["pid"], sig)
                    p["sent"] = True
                except OSError:
                    pass
        return found

    def op_forget(self, req):
        name = arg_name(req)
        with self.name_lock(name):
            if self.replaceable(name, "alive") is None:
                return {"removed": False}
            try:
                os.unlink(self.run_file(name))
            except FileNotFoundError:
                return {"removed": False}
            fsync_dir(self.run_dir)
            return {"removed": True}

    def op_exec(self, req):
        argv, timeout = arg_argv(req), arg(req, "timeout", (int, float), 30)
        env = dict(os.environ)
        env.update(arg_env(req))
        env["PATH"] = child_path(env.get("PATH"))
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=env, cwd=arg_path(req, "cwd", None), close_fds=True, start_new_session=True)
        except OSError as e:  # as a shell reports it
            code = 127 if isinstance(e, (FileNotFoundError, NotADirectoryError)) else 126
            return {"code": code, "signal": None, "stdout": "", "stderr": "%s: %s\n" % (argv[0], e.strerror or e),
                    "timed_out": False}
        self.execs.add(proc)
        try:
            bufs = [bytearray(), bytearray()]
            readers = [threading.Thread(target=read_bounded, args=a, daemon=True)
                       for a in ((proc.stdout, bufs[0]), (proc.stderr, bufs[1]))]
            for t in readers:
                t.start()
            timed_out = False
            try:
                wait_child(proc, timeout, self.pidfd)
            except subprocess.TimeoutExpired:
                timed_out = True
                kill_group(proc.pid, signal.SIGKILL)  # with its children: nothing of a probe lingers
                proc.wait()
            for t in readers:
                t.join(1.0)  # a descendant may hold the pipe open: do not wait for it
        finally:
            self.execs.discard(proc)
        rc = proc.returncode
        return {"code": None if timed_out or rc < 0 else rc, "signal": -rc if rc < 0 and not timed_out else None,
                "stdout": bufs[0].decode("utf-8", "replace"), "stderr": bufs[1].decode("utf-8", "replace"),
                "timed_out": timed_out}

    def op_tail(self, req):
        lines = arg(req, "lines", int, 100)
        if lines < 0:
            raise Refused("bad-request", "'lines' must be >= 0")
        return {"text": tail_text(arg(req, "path", str), lines, READ_LIMIT)}

    def op_tails(self, req):
        # One request per host and refresh for every process still starting there (`up`'s live
        # progress): a missing or unreadable log is left out, not an error for the others.
        paths = arg(req, "paths", list)
        if len(paths) > TAILS_MAX or not all(isinstance(p, str) and os.path.isabs(p) for p in paths):
            raise Refused("bad-request", "'paths' must be at most %d absolute paths" % TAILS_MAX)
        lines = arg(req, "lines", int, 1)
        if lines < 0:
            raise Refused("bad-request", "'lines' must be >= 0")
        max_bytes = min(max(arg(req, "max_bytes", int, 4096), 1), TAILS_LIMIT)
        texts = {}
        for path in paths:
            with suppress(Refused):
                texts[path] = tail_text(path, lines, max_bytes)
        return {"texts": texts}

    def op_read(self, req):
        offset, inode = arg(req, "offset", int, 0), arg(req, "inode", int, None)
        max_bytes = min(max(arg(req, "max_bytes", int, 65536), 1), READ_LIMIT)
        with open_file(arg(req, "path", str)) as f:
            st = os.fstat(f.fileno())
            if not 0 <= offset <= st.st_size or inode not in (None, st.st_ino):
                offset = 0  # truncated or rotated: the new file from its start
            f.seek(offset)
            data = f.read(max_bytes)
        data = data[:utf8_complete(data)]  # the rest of a character comes with the next read
        return {"data": data.decode("utf-8", "replace"), "offset": offset + len(data), "size": st.st_size,
                "inode": st.st_ino}


# ---- helpers of the ops ------------------------------------------------------------------------
_REQUIRED = object()


def arg(req, key, types, default=_REQUIRED):
    """``req[key]`` checked against ``types`` (a bool is no int); ``default`` when absent or null."""
    value = req.get(key)
    if value is None:
        if default is _REQUIRED:
            raise Refused("bad-request", "missing %r" % key)
        return default
    if not isinstance(value, types) or isinstance(value, bool):
        raise Refused("bad-request", "%r has the wrong type" % key)
    return value


def arg_name(req):
    """A process name: also a file name under run/, so no '/' and no leading dot."""
    name = arg(req, "name", str)
    if not name or len(name) > 128 or not set(name) <= NAME_CHARS or name[0] in ".-":
        raise Refused("bad-request", "bad process name %r" % name)
    return name


def arg_argv(req):
    argv = arg(req, "argv", list)
    if not argv or not argv[0] or not all(isinstance(a, str) and "\0" not in a for a in argv):
        raise Refused("bad-request", "'argv' must be a non-empty list of strings without NUL")
    return argv


def arg_env(req):
    env = arg(req, "env", dict, {})
    for k, v in env.items():
        if not k or "=" in k or "\0" in k or not isinstance(v, str) or "\0" in v:
            raise Refused("bad-request", "bad environment variable %r" % k)  # the name only, never the value
    return env


def arg_files(req):
    files = arg(req, "files", dict, {})
    for k, v in files.items():
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", k) or not isinstance(v, str) or len(v) > 1 << 20:
            raise Refused("bad-request", "bad TLS file name %r (a plain file name) or content" % k)
    return files


def arg_path(req, key, default):
    path = arg(req, key, str, default)
    if path is not None and not os.path.isabs(path):
        raise Refused("bad-request", "%r must be an absolute path" % key)
    return path


def arg_signal(req):
    sig = SIGNALS.get(arg(req, "signal", str))
    if sig is None:
        raise Refused("bad-request", "'signal' must be one of %s" % ", ".join(SIGNALS))
    return sig


def open_file(path):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise Refused("not-found", "%s: no such file" % path)
    except OSError as e:
        raise Refused("os-error", "%s: %s" % (path, e.strerror))


def tail_text(path, lines, limit):
    """The last ``lines`` lines of the file ``path`` (at most ``limit`` bytes of them), as text."""
    with open_file(path) as f:
        pos, data = f.seek(0, os.SEEK_END), b""
        while pos > 0 and data.count(b"\n") <= lines and len(data) < limit:
            step = min(65536, pos, limit - len(data))  # backwards from the end: a huge log costs nothing
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    kept = data.splitlines(True)[-lines:] if lines else []
    return b"".join(kept)[-limit:].decode("utf-8", "replace")


def utf8_complete(data):
    """Length of ``data`` without a trailing, incomplete UTF-8 sequence."""
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b < 0x80:
            return len(data)
        if b >= 0xC0:  # a lead byte: complete if all its continuation bytes are there
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return len(data) - back if need > back else len(data)
    return len(data)


def kill_group(pid, sig):
    """Signal the process group ``pid`` leads (else the process alone); True when sent."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, sig)
            return True
        except ProcessLookupError:
            continue
        except OSError:
            return False
    return False


def scan(launch_id):
    """Every live process of our user whose environment carries ``DYNAMO_LAUNCH_ID=launch_id``
    (another user's process that sets it is none of ours: never reported, so never signalled)."""
    if not launch_id:
        raise Refused("bad-request", "empty launch_id")
    needle, found = b"DYNAMO_LAUNCH_ID=" + launch_id.encode(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if not owned_by_us(int(entry)):
                continue
            with open("/proc/%s/environ" % entry, "rb") as f:
                variables = f.read().split(b"\0")
        except OSError:
            continue  # vanished, or someone else's
        stat = proc_stat(int(entry)) if needle in variables else None
        if stat is None or stat[0] in DEAD:
            continue
        env = dict(v.split(b"=", 1) for v in variables if v.startswith(b"DYNAMO_LAUNCH_") and b"=" in v)
        gen = env.get(b"DYNAMO_LAUNCH_GENERATION", b"").decode("utf-8", "replace")
        found.append({"pid": int(entry), "start_time": stat[1],
                      "name": env.get(b"DYNAMO_LAUNCH_NAME", b"").decode("utf-8", "replace") or None,
                      "generation": int(gen) if gen.isdigit() else gen or None})
    return found


def read_bounded(pipe, buf):
    """Read ``pipe`` to its end (so the writer never blocks), keeping OUTPUT_LIMIT bytes in ``buf``."""
    try:
        for chunk in iter(lambda: pipe.read1(65536), b""):
            buf += chunk[:max(0, OUTPUT_LIMIT - len(buf))]
    except (OSError, ValueError):
        pass


def serve(state_dir):
    """The request loop, until EOF on stdin: the daemon went away."""
    forks = None
    # Python >= 3.9 and no thread yet. Forked shims show the agent's environment in /proc, so not
    # when that names a launch (a scan would take the shims for its processes).
    if hasattr(socket, "send_fds") and threading.active_count() == 1 and not set(LAUNCH_VARS) & set(os.environ):
        try:
            forks = ForkServer()
        except OSError as e:
            sys.stderr.write("agent: no fork server (%s): shims start in fresh interpreters\n" % one_line(e))
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print (ours or a library's) must not corrupt the protocol
    sys.stdout = sys.stderr
    agent = Agent(state_dir, out, forks)
    for line in iter(sys.stdin.buffer.readline, b""):
        if line.strip():
            threading.Thread(target=agent.handle, args=(line,), daemon=True).start()
    deadline = time.monotonic() + 1.0  # answer what is in flight (a long `exec` is cut short)
    while threading.active_count() > 2 and time.monotonic() < deadline:  # 2: this one + watcher
        time.sleep(0.01)
    agent.shutdown()


def main(argv):
    """``agent.py serve --state-dir DIR`` | ``agent.py shim`` (internal)."""
    if argv[:1] == ["serve"] and len(argv) == 3 and argv[1] == "--state-dir":
        serve(argv[2])
    elif argv == ["shim"]:
        shim_main()
    else:
        sys.stderr.write("usage: agent.py serve --state-dir DIR\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
