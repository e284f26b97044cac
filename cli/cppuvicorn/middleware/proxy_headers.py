"""X-Forwarded-Proto / X-Forwarded-For handling, with Uvicorn's exact semantics.

Only requests whose direct peer is trusted (``--forwarded-allow-ips``) are rewritten:

* ``x-forwarded-proto`` (last one wins) sets ``scope["scheme"]`` when it is http, https, ws
  or wss; WebSocket scopes get the ws/wss spelling.
* all ``x-forwarded-for`` headers are joined with ``", "`` and walked right to left; the first
  untrusted hop becomes ``scope["client"]`` (the left-most one if every hop is trusted).
  ``host:port`` and ``[v6]:port`` keep their port, otherwise the port is 0.

cppuvicorn's server does this natively, before the scope is built (``core/proxy_headers.cpp``),
so ``Config`` no longer wraps the application in this middleware. It stays for applications that
wrap themselves in it, as they can with Uvicorn's, and :func:`native_trusted_hosts` hands the
native core a ``--forwarded-allow-ips`` value read exactly as :class:`TrustedHosts` reads it.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_PROTOS = frozenset({"http", "https", "ws", "wss"})


class ProxyHeadersMiddleware:
    def __init__(self, app: Any, trusted_hosts: list[str] | str = "127.0.0.1") -> None:
        self.app = app
        self.trusted_hosts = TrustedHosts(trusted_hosts)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            client = scope.get("client")
            if (client[0] if client else None) in self.trusted_hosts:
                self._rewrite(scope)
        return await self.app(scope, receive, send)

    def _rewrite(self, scope: Any) -> None:
        proto: bytes | None = None
        forwarded_for: list[bytes] = []
        for name, value in scope["headers"]:
            if name == b"x-forwarded-proto":
                proto = value
            elif name == b"x-forwarded-for":
                forwarded_for.append(value)

        if proto is not None:
            scheme = proto.decode("latin1").strip()
            if scheme in _PROTOS:
                scope["scheme"] = scheme.replace("http", "ws") if scope["type"] == "websocket" else scheme

        if forwarded_for:
            host, port = self.trusted_hosts.get_trusted_client_address(b", ".join(forwarded_for).decode("latin1"))
            if host:  # an empty header yields no usable client (uvicorn#1068)
                scope["client"] = (host, port)


def _split_hosts(value: str) -> list[str]:
    return [item.strip() for item in value.split(",")]


def _parse_host_port(value: str) -> tuple[str, int]:
    """Split ``host``, ``host:port`` or ``[v6]:port``; anything malformed is kept whole, port 0."""
    if value.startswith("["):
        end = value.find("]")
        if end == -1:
            return value, 0
        host, rest = value[1:end], value[end + 1 :]
        if not rest:
            return host, 0
        if not rest.startswith(":"):
            return value, 0
        try:
            return host, int(rest[1:])
        except ValueError:
            return host, 0

    if value.count(":") == 1:
        host, port = value.rsplit(":", 1)
        try:
            return host, int(port)
        except ValueError:
            return value, 0
    return value, 0


class TrustedHosts:
    """Set of trusted IPs, networks and literals (e.g. a UNIX socket path); ``*`` trusts all."""

    def __init__(self, trusted_hosts: list[str] | str) -> None:
        self.always_trust = trusted_hosts in ("*", ["*"])
        self.trusted_literals: set[str] = set()
        self.trusted_hosts: set[_IPAddress] = set()
        self.trusted_networks: set[_IPNetwork] = set()

        if not self.always_trust:
            hosts = _split_hosts(trusted_hosts) if isinstance(trusted_hosts, str) else trusted_hosts
            for host in hosts:
                try:
                    if "/" in host:
                        self.trusted_networks.add(ipaddress.ip_network(host))
                    else:
                        self.trusted_hosts.add(ipaddress.ip_address(host))
                except ValueError:
                    self.trusted_literals.add(host)

        self._trusts = functools.lru_cache(maxsize=4096)(self._compute_trust)

    def __contains__(self, host: str | None) -> bool:
        if self.always_trust:
            return True
        if not host:
            return False
        if len(host) > 253:  # longer than any DNS name: never cache it
            return self._compute_trust(host)
        return self._trusts(host)

    def _compute_trust(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return host in self.trusted_literals
        return ip in self.trusted_hosts or any(ip in net for net in self.trusted_networks)

    def get_trusted_client_address(self, x_forwarded_for: str) -> tuple[str, int]:
        """The first untrusted hop from the right, else the left-most entry."""
        hops = _split_hosts(x_forwarded_for)
        if not self.always_trust:
            for hop in reversed(hops):  # each proxy appends, so walk from the closest one
                host, port = _parse_host_port(hop)
                if host not in self:
                    return host, port
        return _parse_host_port(hops[0])


# Uvicorn's private name, for code that imported it.
_TrustedHosts = TrustedHosts


def native_trusted_hosts(trusted_hosts: list[str] | str) -> tuple[bool, list[bytes]]:
    """``--forwarded-allow-ips`` for the native core: (trust everything, entries as Latin-1).

    Python decides what Python decides in :class:`TrustedHosts` (``"*"`` against ``["*"]``, the
    split at commas and ``str.strip()``); the core parses each entry as ``ipaddress`` does and
    compares with hosts decoded from headers as Latin-1. An entry that is not Latin-1 can never
    equal such a host, nor carry an address that could (IPv4 and IPv6 text are ASCII; a zone id
    is compared too); only a network can still match, as membership ignores the zone id, so it
    is passed on without one.
    """
    always = trusted_hosts in ("*", ["*"])
    hosts = _split_hosts(trusted_hosts) if isinstance(trusted_hosts, str) else list(trusted_hosts)
    entries: list[bytes] = []
    for host in hosts if not always else ():
        try:
            entries.append(host.encode("latin-1"))
            continue
        except UnicodeEncodeError:
            pass
        if "/" in host:
            try:
                net = ipaddress.ip_network(host)
            except ValueError:
                continue
            address = type(net.network_address)(int(net.network_address))  # without the zone
            entries.append(f"{address}/{net.prefixlen}".encode())
    return always, entries

