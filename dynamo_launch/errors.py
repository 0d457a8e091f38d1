"""The project's exception hierarchy.

::

    DynamoLaunchError                 base of everything we raise on purpose
    ├── InventoryError                the inventory file is unreadable or invalid
    │                                 (carries every Problem found, each located)
    ├── PlanError                     a valid inventory that cannot be planned
    ├── TransportError                a host could not be reached or used (names the
    │   │                             host as ``name (user@address:port)``)
    │   ├── HostUnreachable           no SSH connection after every retry
    │   ├── HostKeyUnknown            the host's key is not in known_hosts (carries the
    │   │                             key type, SHA256 fingerprint and the command to trust it)
    │   ├── HostKeyChanged            known_hosts holds a different key: never connected
    │   ├── AuthenticationFailed      the server refused our client key(s)
    │   ├── CommandTimeout            a command outlived its timeout (and was killed)
    │   └── ChannelClosed             a channel or the connection under it went away
    ├── AgentError                    the node agent answered ``ok: false`` (has ``kind``)
    ├── UnsafePath                    a state directory or file the launcher would use is
    │                                 another user's, a symlink, writable by others, or
    │                                 cannot be made (names the host and the path)
    ├── SecretError                   a secret reference cannot be resolved
    ├── IllegalTransition             a state machine refused an event (unchanged)
    ├── MirrorError                   etcd could not be used (one line, names the endpoints)
    │   ├── LeaderHeld                another daemon holds the cluster's leader key
    │   └── NotPublished              no daemon ever published this cluster's status
    ├── EventBusError                 NATS could not be used (names the URL)
    ├── ControlError                  the daemon answered an error, or the exchange failed
    │   ├── NoDaemon                  no daemon listens for this cluster
    │   └── BadRequest                a control request the daemon cannot read (one line)
    ├── PreflightFailed               a preflight check failed: nothing was started
    ├── StateUnwritable               the state file cannot be written (full or read-only disk)
    └── AlreadyRunning                another daemon supervises this cluster

Every class the project raises on purpose is defined here, so the whole tree reads in one
place and the CLI can catch ``DynamoLaunchError`` and print one line instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .printable import clean

__all__ = [
    "AgentError",
    "AlreadyRunning",
    "AuthenticationFailed",
    "BadRequest",
    "ChannelClosed",
    "CommandTimeout",
    "ControlError",
    "DynamoLaunchError",
    "EventBusError",
    "HostKeyChanged",
    "HostKeyUnknown",
    "HostUnreachable",
    "IllegalTransition",
    "InventoryError",
    "LeaderHeld",
    "MirrorError",
    "NoDaemon",
    "NotPublished",
    "PlanError",
    "PreflightFailed",
    "Problem",
    "SecretError",
    "StateUnwritable",
    "TransportError",
    "UnsafePath",
]


class DynamoLaunchError(Exception):
    """Base class for errors the CLI reports as plain messages."""


@dataclass(frozen=True, order=True)
class Problem:
    """One located validation problem: ``file:line: key.path: message``."""

    line: int
    key: str
    message: str
    file: str = ""

    def __str__(self) -> str:
        if self.line <= 0:  # about the file as a whole (it cannot be read): no line to point at
            where = self.file or "inventory"
        else:
            where = f"{self.file}:{self.line}" if self.file else f"line {self.line}"
        text = f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"
        return clean(text)  # one line on the terminal, whatever the file held


class InventoryError(DynamoLaunchError):
    """The inventory could not be loaded; ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class PlanError(DynamoLaunchError):
    """A plan could not be built from an otherwise valid inventory."""


# --- transport (dynamo_launch/transport/) -----------------------------------------------------


class TransportError(DynamoLaunchError):
    """A host could not be reached or used; the message is one line and names the host."""

    def __init__(self, message: str, *, host: str = ""):
        self.host = host
        super().__init__(message)


class HostUnreachable(TransportError):
    """No SSH connection could be made to the host (after every retry)."""


class _HostKeyProblem(TransportError):
    """Shared by the two host key refusals: the offered key and the command that trusts it."""

    def __init__(self, message: str, *, host: str = "", key_type: str = "", fingerprint: str = "",
                 command: str = ""):
        self.key_type = key_type
        self.fingerprint = fingerprint
        self.command = command
        super().__init__(message, host=host)


class HostKeyUnknown(_HostKeyProblem):
    """The host offered a key that known_hosts does not hold; nothing was run.

    ``key_type``/``fingerprint`` describe the offered key; ``command`` is the
    ``ssh-keyscan … >> known_hosts`` line that trusts it (verify the fingerprint out of band).
    """


class HostKeyChanged(_HostKeyProblem):
    """known_hosts holds a different key for the host (possible man-in-the-middle); never connected.

    Not a subclass of :class:`HostKeyUnknown`, so code that offers to trust unknown keys can
    never catch this one by accident. Same attributes as :class:`HostKeyUnknown`.
    """


class AuthenticationFailed(TransportError):
    """The server refused every client key offered (or the key file could not be used)."""


class CommandTimeout(TransportError):
    """A command did not finish within its timeout; it was killed. Carries what it printed so far."""

    def __init__(self, message: str, *, host: str = "", timeout: float = 0.0, stdout: bytes = b"",
                 stderr: bytes = b""):
        self.timeout = timeout
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(message, host=host)


class ChannelClosed(TransportError):
    """A channel (or the connection carrying it) closed while it was in use."""


class AgentError(DynamoLaunchError):
    """The node agent answered a request with ``ok: false``; ``kind`` classifies the failure."""

    def __init__(self, kind: str, message: str, *, op: str = "", host: str = ""):
        self.kind = kind
        self.op = op
        self.host = host
        super().__init__(message)


class UnsafePath(DynamoLaunchError):
    """A directory or file the launcher would create or reuse cannot be trusted or made: owned by
    another user, a symlink, writable by group or others, or not creatable there. ``host`` names
    the host ("" for the head's daemon itself); the message is one line and names the path."""

    def __init__(self, message: str, *, host: str = ""):
        self.host = host
        super().__init__(message)


class SecretError(DynamoLaunchError):
    """A secret reference cannot be resolved (unset variable, unreadable file)."""


class IllegalTransition(DynamoLaunchError):
    """An event the machine's current state does not accept; the machine is unchanged."""

    def __init__(self, machine: str, state: str, event: object):
        self.machine, self.state, self.event = machine, state, event
        super().__init__(f"{machine}: {event!r} is not accepted in state {state}")


# --- etcd, NATS, the control socket -----------------------------------------------------------


class MirrorError(DynamoLaunchError):
    """etcd could not be used (unreachable, refused, timed out, bad endpoint); one line."""


class LeaderHeld(MirrorError):
    """Another daemon holds the cluster's leader key: ``holder`` is that key's value."""

    def __init__(self, cluster: str, holder: str, *, key: str = "", endpoints: str = "", ttl: int | None = None):
        self.cluster, self.holder, self.key, self.endpoints, self.ttl = cluster, holder, key, endpoints, ttl
        expiry = f"; if it is gone, its lease runs out within {ttl}s" if ttl is not None and ttl > 0 else ""
        super().__init__(f"cluster {cluster} is already supervised by {holder} (etcd key {key} at {endpoints}): "
                         f"stop that daemon first{expiry}")


class NotPublished(MirrorError):
    """No daemon ever published this cluster's status in this etcd."""


class EventBusError(DynamoLaunchError):
    """NATS could not be used (unreachable at connect, bad URL); one line naming the URL."""


class ControlError(DynamoLaunchError):
    """The daemon answered with an error, or the exchange failed."""


class NoDaemon(ControlError):
    """No daemon is listening for this cluster."""


class BadRequest(ControlError):
    """A control request that is not a JSON object with a known ``op`` and well-typed arguments."""


# --- the daemon ---------------------------------------------------------------------------------


class PreflightFailed(DynamoLaunchError):
    """At least one preflight check failed: nothing was started.

    ``checks`` holds every :class:`~dynamo_launch.preflight.Check` of the run (each has a
    ``status`` of ``"ok"``, ``"warn"`` or ``"fail"``).
    """

    def __init__(self, checks: Sequence[Any]):
        self.checks = list(checks)
        failed = [c for c in self.checks if c.status == "fail"]
        super().__init__(f"preflight failed ({len(failed)} problem{'s' if len(failed) != 1 else ''}): nothing was started")


class StateUnwritable(DynamoLaunchError):
    """The state directory cannot take the state file (a full or read-only disk): ``up`` starts
    nothing, since a daemon that cannot record what it starts could not find it again."""


class AlreadyRunning(DynamoLaunchError):
    """Another daemon supervises this cluster (it holds the state directory's lock or the leader key)."""
