"""The embedded Redis server: one server per data directory, even after its owner was killed."""

import os
import signal
from pathlib import Path

import redis

from shared.embedded_redis import EmbeddedRedis

ONE_DATABASE = True  # no database here


def test_a_server_left_behind_on_a_directory_is_replaced_and_its_data_kept(
    tmp_path: Path,
) -> None:
    left = EmbeddedRedis(tmp_path / "redis")  # its owner "killed": never stopped
    redis.Redis.from_url(left.start()).set("kept", "yes")
    assert left.process is not None
    old_pid = left.process.pid

    server = EmbeddedRedis(tmp_path / "redis")
    try:
        client = redis.Redis.from_url(server.start())
        assert server.process is not None

        assert left.process.wait(timeout=10) == 0  # stopped cleanly, not killed
        assert client.get("kept") == b"yes"  # read back from the append-only file
        assert server.pidfile.read_text().strip() == str(server.process.pid)
    finally:
        server.stop()
        if left.process.poll() is None:
            os.kill(old_pid, signal.SIGKILL)
            left.process.wait()
