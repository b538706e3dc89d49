"""`host:port` addresses as flags, configurations, handshakes and clients write them.

One parser for every place an address is read, so that a flag, a member address carried in the
Raft configuration and a server given to the client all accept the same forms: `host:port`,
`name.example:port` and `[v6-address]:port`.
"""

from __future__ import annotations


def parse_address(address: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """`host:port`, or `[v6-address]:port`, as (host, port); ValueError when it is not one.

    Port 0 (let the system choose) makes sense only for an address to listen on.
    """
    host, separator, port = address.rpartition(":")
    if not separator or not host or not port.isdigit():
        raise ValueError(f"not a host:port address: {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    lowest = 0 if allow_port_zero else 1
    if not lowest <= number <= 65535 or not host:
        raise ValueError(f"not a host:port address with a port from {lowest} to 65535: {address!r}")
    return host, number


def format_address(host: str, port: int) -> str:
    """The `host:port` text of an address, bracketing IPv6 hosts."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"
