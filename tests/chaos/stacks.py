"""Chaos under load: each test runs a stack of its own, puts jobs with webhooks through it, and
breaks one part mid-load (`survive`). Afterwards every job must have succeeded, none lost, none
finished twice, and every terminal event delivered; the recovery time is printed. The tests are
in three modules so that parallel test runs spread them."""

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from shared.embedded_redis import EmbeddedRedis
from tests.chaos.load import Load
from tests.chaos.proxy import TcpProxy
from tests.conftest import fresh_database, own_redis
from tests.fakes.ollama import FakeOllama
from tests.fakes.receiver import Receiver
from tests.harness import SHORT_LEASE, Kiln, running_kiln

JOBS = 120
CLIENTS = 8
TOKEN_DELAY_S = 0.01  # five tokens a job: the gpu worker stays busy through the load
FAULT_AFTER_JOBS = 30  # the fault strikes once this many jobs are in
ENV = {
    "KILN_CALLBACK_ALLOW_PRIVATE": "true",
    "KILN_WEBHOOK_RETRY_SCHEDULE": "0,1,2,4,4,4,4,4,4,4",
    "KILN_LLM_RETRIES": "6",  # its back-off outlasts a 10 s outage of the backend
    **SHORT_LEASE,
}
# Full jitter draws each delay from [0, scheduled]: twenty 8 s slots outlast 30 s of 503s.
PATIENT_SCHEDULE = ",".join(["0", "2", "4"] + ["8"] * 20)


@dataclass
class Chaos:
    """A stack and the parts a test may break."""

    kiln: Kiln
    redis: EmbeddedRedis
    database_proxy: TcpProxy | None


@contextmanager
def chaos_stack(
    directory: Path, backend: str, ollama: FakeOllama, *, proxied: bool = False, **env: str
) -> Iterator[Chaos]:
    """A stack with its own Redis and database; `proxied` puts the database behind a proxy."""
    with ExitStack() as parts:
        redis_server = parts.enter_context(own_redis(directory / "redis"))
        url = parts.enter_context(fresh_database(backend, directory / "db"))
        proxy = None
        if proxied:
            direct = make_url(url)
            proxy = parts.enter_context(TcpProxy(direct.host or "127.0.0.1", direct.port or 5432))
            url = direct.set(host="127.0.0.1", port=proxy.port).render_as_string(
                hide_password=False
            )
        settings = {
            **ENV,
            "KILN_LLM_PROVIDER": "ollama",
            "KILN_OLLAMA_URL": ollama.url,
            **env,
        }
        stack = running_kiln(directory / "stack", url, redis_server.url, settings)
        kiln = parts.enter_context(stack)
        yield Chaos(kiln, redis_server, proxy)


def survive(chaos: Chaos, receiver: Receiver, name: str, fault: Callable[[], None]) -> None:
    """Run the load, strike with `fault` (which returns once the broken part is back), then
    check that nothing was lost, doubled or left undelivered."""
    key = chaos.kiln.new_key("chaos")
    load = Load(chaos.kiln.url, key, receiver, JOBS, CLIENTS).start()
    deadline = time.monotonic() + 120
    while len(load.submitted) < FAULT_AFTER_JOBS:
        assert time.monotonic() < deadline, "the load never got going"
        time.sleep(0.05)
    fault()
    back = time.monotonic()
    load.join()
    audit = load.audit(timeout=240)

    print(
        f"\n{name}: {audit.submitted} jobs {dict(audit.statuses)}, "
        f"recovered {audit.settled_at - back:.1f} s after the fault ended, "
        f"{load.retries} submissions retried, {audit.duplicate_deliveries} redeliveries"
    )
    assert audit.submitted == JOBS
    assert audit.lost == []
    assert audit.finished_twice == []
    assert audit.undelivered == []
    assert audit.statuses == {"succeeded": JOBS}


def kill(kiln: Kiln, service: str) -> None:
    """SIGKILL a service of the stack and everything it started."""
    pid = kiln.stack.services[service].pid
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
