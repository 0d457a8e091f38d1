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
    └── AgentError                    the node agent answered ``ok: false`` (has ``kind``)

Later layers (transport, supervisor) add their own subclasses here so that the
CLI can catch ``DynamoLaunchError`` and print one line instead of a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AgentError",
    "AuthenticationFailed",
    "ChannelClosed",
    "CommandTimeout",
    "DynamoLaunchError",
    "HostKeyChanged",
    "HostKeyUnknown",
    "HostUnreachable",
    "InventoryError",
    "PlanError",
    "Problem",
    "TransportError",
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
        where = f"{self.file}:{self.line}" if self.file else f"line {self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


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
