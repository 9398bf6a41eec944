"""`free_port` gives ports that a server started next can bind, never one that the kernel
hands out for a bind to port 0 or an outgoing connection, and never the same one to two
callers starting at once."""

import socket
import subprocess
import sys
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
        given = {free_port() for _ in PICKED_PORTS}  # the whole range, in turn
    assert taken in PICKED_PORTS
    assert taken not in given
    assert given <= set(PICKED_PORTS)


def test_parallel_callers_in_different_processes_never_get_the_same_port() -> None:
    # 400 random picks of 12,768 ports would repeat one with a probability of about 0.998.
    pick = "from shared.embedded_redis import free_port; print(*(free_port() for _ in range(100)))"
    callers = [
        subprocess.Popen([sys.executable, "-c", pick], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    ports = [int(port) for caller in callers for port in caller.communicate(timeout=60)[0].split()]

    assert all(caller.returncode == 0 for caller in callers)
    assert len(ports) == 400
    assert len(set(ports)) == 400
