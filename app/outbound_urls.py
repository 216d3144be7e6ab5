"""Where sip-router may send requests of its own (consulted services, company functions).

`https://` anywhere; `http://` only to loopback and private addresses, `localhost`, names
without a dot (a container or Kubernetes service name) and names under private-use
suffixes, with a warning that such requests travel unencrypted. Pure: no I/O, no DNS.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

_PRIVATE_NAME_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa", ".svc")


def check_outbound_url(url: str) -> tuple[str | None, str | None]:
    """(problem, warning) for a URL sip-router posts to: https anywhere, http only to private hosts.

    http:// is allowed to loopback and private addresses, to `localhost`, to names
    without a dot (a container or Kubernetes service name) and to names under private-use
    suffixes; such requests are unencrypted, so they come with a warning.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        return "not a valid URL", None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an https:// URL (or http:// to a private address)", None
    if parts.username is not None or parts.password is not None:
        return "must not hold a user name or password (sip-router signs its requests)", None
    if parts.fragment:
        return "must not have a #fragment", None
    if parts.scheme == "https":
        return None, None
    host = parts.hostname.lower().rstrip(".")
    if not _private_host(host):
        return (
            f"http:// is allowed only to loopback and private addresses; {host} is not one"
            " (use https://)",
            None,
        )
    return None, f"requests to {host} go unencrypted over http:// (allowed: a private address)"


def _private_host(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or "." not in host or host.endswith(_PRIVATE_NAME_SUFFIXES)
    return address.is_loopback or address.is_private or address.is_link_local
