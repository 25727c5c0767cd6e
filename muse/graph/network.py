"""Where a graph may send video over the network.

Graphs are shared like workflows, so a downloaded graph must not stream the webcam to a
server it names. Network outputs (fields a node lists in `network_outputs`, e.g.
`output.stream`'s `url`) may only name this machine (127.0.0.0/8, ::1, `localhost`;
names are not resolved, so DNS cannot turn a name into a loopback address) unless the
user allows network output: `muse run/validate --allow-network`, or `MUSE_ALLOW_NETWORK=1`.
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlparse

ALLOW_ENV = "MUSE_ALLOW_NETWORK"


def network_allowed(flag: bool = False) -> bool:
    return flag or os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def url_host(url: str) -> str:
    try:
        return (urlparse(url).hostname or "").strip().lower()
    except ValueError:
        return ""


def is_loopback_url(url: str) -> bool:
    """True when `url` names this machine by a loopback address or `localhost` (no name lookup)."""
    host = url_host(url)
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refusal(url: str) -> str:
    host = url_host(url) or "(no host)"
    return (f"{url!r} sends video to {host}, another machine; graphs may only stream to this machine "
            f"(127.0.0.1, ::1, localhost) unless you allow network output")


HINT = f"if you trust this graph, run it with --allow-network (or set {ALLOW_ENV}=1)"
