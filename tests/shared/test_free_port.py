"""`free_port` gives ports that a server started next can bind, and never one that the kernel
hands out for a bind to port 0 or an outgoing connection."""

import socket
from pathlib import Path

from shared.embedded_redis import PICKED_PORTS, free_port


def _ephemeral_ports() -> range:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return range(int(low), int(high) + 1)


def test_picked_ports_lie_outside_the_kernels_ephemeral_range() -> None:
    ephemeral = _ephemeral_ports()
    assert PICKED_PORTS.stop <= ephemeral.start or PICKED_PORTS.start >= ephemeral.stop
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        assert sock.getsockname()[1] in ephemeral


def test_a_free_port_can_be_bound_and_a_listening_one_is_never_given() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", free_port()))
        server.listen()
        taken = server.getsockname()[1]
        given = {free_port() for _ in range(50_000)}  # each port ~4 times over
    assert taken in PICKED_PORTS
    assert taken not in given
    assert given <= set(PICKED_PORTS)
