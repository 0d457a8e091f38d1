"""Addresses as the inventory writes them (pure): host names, IP addresses, ``host:port``."""

from __future__ import annotations

import ipaddress
import re

__all__ = ["split_hostport", "valid_address"]

_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def valid_address(address: str) -> bool:
    """True for an IPv4/IPv6 address or a DNS host name."""
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        return bool(_HOSTNAME.fullmatch(address))


def split_hostport(text: str) -> tuple[str, int] | None:
    """``("127.0.0.1", 9400)`` from ``"127.0.0.1:9400"`` (``"[::1]:9400"`` for IPv6); None when malformed."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^\s:\[\]]+):(\d{1,5})", text)
    if not m:
        return None
    host, port = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
    if not 1 <= int(port) <= 65535:
        return None
    if m.group(1) is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    elif not valid_address(host):
        return None
    return host, int(port)
