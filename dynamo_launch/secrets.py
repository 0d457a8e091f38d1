"""Resolving secret references at launch time, on the head.

The plan carries :class:`~dynamo_launch.model.SecretRef` values; only here do
they become strings, right before a spawn, and the strings go nowhere but the
agent's ``spawn`` request (never the state file, the log, events or status).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .errors import SecretError
from .model import SecretRef
from .plan.spec import Env

__all__ = ["check", "redact", "resolve"]


def _value(ref: SecretRef, environ: Mapping[str, str]) -> str:
    if ref.kind == "env":
        if ref.ref not in environ:
            raise SecretError(f"${{{ref.ref}}} is not set in the daemon's environment")
        return environ[ref.ref]
    try:  # "file" and "generated" (see credentials.py) alike
        with open(ref.ref, encoding="utf-8") as f:
            return f.read().rstrip("\n")
    except OSError as e:
        raise SecretError(f"{ref}: {e.strerror or e}") from None


def resolve(env: tuple[Env, ...], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a process with every reference replaced by its value."""
    environ = os.environ if environ is None else environ
    return {e.name: _value(e.value, environ) if isinstance(e.value, SecretRef) else e.value for e in env}


def check(envs: list[tuple[str, tuple[Env, ...]]], environ: Mapping[str, str] | None = None) -> list[str]:
    """One message per unresolvable reference, naming the process and variable (for preflight)."""
    environ = os.environ if environ is None else environ
    problems = []
    seen: set[tuple[str, str]] = set()
    for process, env in envs:
        for e in env:
            if isinstance(e.value, SecretRef) and (e.name, str(e.value)) not in seen:
                try:
                    _value(e.value, environ)
                except SecretError as err:
                    seen.add((e.name, str(e.value)))
                    problems.append(f"{process}: {e.name}: {err}")
    return problems


def redact(text: str, env: tuple[Env, ...], environ: Mapping[str, str] | None = None) -> str:
    """``text`` (a process's own output, shown in ``status``) with the value of every secret of
    ``env`` that resolves replaced by ``***``: a process that prints its token leaks it no further."""
    environ = os.environ if environ is None else environ
    values = set()
    for e in env:
        if isinstance(e.value, SecretRef):
            try:
                values.add(_value(e.value, environ))
            except SecretError:
                continue
    for v in sorted(values, key=len, reverse=True):
        if len(v) >= 4:  # shorter would blank ordinary words
            text = text.replace(v, "***")
    return text
