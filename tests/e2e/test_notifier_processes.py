"""Notifier processes against real Kafka and FerretDB: an SMTP outage, and a replica crash."""

import asyncio
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from faststream.kafka import KafkaBroker

from common.events import USERS_TOPIC, Envelope, UserRegistered, new_event
from common.infra import open_broker
from common.kafka import publish
from services.notifier.settings import NotifierSettings
from tests.support.infra import (
    KAFKA_BOOTSTRAP,
    ROOT,
    STATE_DIR,
    free_port,
    infra_env,
    wait_listening,
)
from tests.support.mail import MailBox
from tests.support.metrics import metric_sum
from tests.support.processes import ServiceProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e


class MailSink:
    """The foundation's SMTP sink as its own process, on its own port and directory."""

    def __init__(self, port: int, directory: Path, log: Path) -> None:
        self.port, self.directory, self.log = port, directory, log
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "MailSink":
        args = ["--port", str(self.port), "--dir", str(self.directory)]
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "deploy.local.mailsink", *args],
                cwd=ROOT,
                stdout=out,
                stderr=out,
            )
        wait_listening(self.port, 20, "the mail sink")
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None


def notifier_env(prefix: str, port: int, smtp_port: int | None = None) -> dict[str, str]:
    env = {
        **infra_env(prefix),
        "NOTIFIER_PORT": str(port),
        "NOTIFIER_RETRY_TIERS": "5",
        "NOTIFIER_RETRY_BASE_DELAY_S": "0.5",
        "NOTIFIER_RETRY_FACTOR": "2",
        "NOTIFIER_SMTP_TIMEOUT_S": "2",
        "NOTIFIER_CLAIM_LEASE_S": "3",
        "NOTIFIER_CONSUMER_SESSION_TIMEOUT_MS": "6000",
    }
    if smtp_port is not None:
        env["NOTIFIER_SMTP_PORT"] = str(smtp_port)
    return env


def start_notifier(prefix: str, name: str, smtp_port: int | None = None) -> ServiceProcess:
    port = free_port()
    log = STATE_DIR / "log" / "tests" / f"{prefix}-{name}.log"
    return ServiceProcess("services.notifier", port, notifier_env(prefix, port, smtp_port), log)


def metric(proc: ServiceProcess, name: str, **labels: str) -> float:
    return metric_sum(httpx.get(f"{proc.url}/metrics", timeout=5).text, name, **labels)


@pytest.fixture
async def producer(prefix: str) -> AsyncIterator[tuple[KafkaBroker, NotifierSettings]]:
    settings = NotifierSettings(kafka_bootstrap=KAFKA_BOOTSTRAP, topic_prefix=f"{prefix}.")
    async with open_broker(settings, [USERS_TOPIC]) as broker:
        yield broker, settings


def welcome(email: str) -> Envelope:
    user_id = uuid.uuid4().hex
    payload = UserRegistered(user_id=user_id, email=email, name="N")
    return new_event(payload, source="auth", subject=user_id)


async def test_mail_sent_while_smtp_is_down_arrives_once_it_is_back(
    prefix: str, tmp_path: Path, producer: tuple[KafkaBroker, NotifierSettings]
) -> None:
    broker, settings = producer
    sink = MailSink(free_port(), tmp_path / "mail", tmp_path / "sink.log")
    sink.directory.mkdir()
    sink.start()
    notifier = start_notifier(prefix, "smtp-outage", sink.port).start()
    try:
        notifier.wait_ready()
        sink.stop()
        email = f"{prefix}@example.com"
        await publish(broker, settings, USERS_TOPIC, welcome(email))

        await eventually(
            lambda: metric(notifier, "taskbus_notifier_retried_total") >= 2, 30, "two retries"
        )
        box = MailBox(sink.directory)
        assert box.to(email) == []
        sink.start()

        [mail] = await box.wait(email)
        assert mail["X-Taskbus-Kind"] == "welcome"
        assert metric(notifier, "taskbus_notifier_dead_lettered_total") == 0
    finally:
        notifier.stop()
        sink.stop()


async def test_killing_one_of_two_notifiers_mid_stream_loses_and_repeats_nothing(
    prefix: str, producer: tuple[KafkaBroker, NotifierSettings]
) -> None:
    broker, settings = producer
    first = start_notifier(prefix, "first").start()
    second = start_notifier(prefix, "second").start()
    groups = [f"{prefix}.notifier.users", f"{prefix}.notifier.tasks"]
    box = MailBox()
    try:
        first.wait_ready()
        second.wait_ready()

        def split() -> bool:
            owned = [
                sum(metric(p, "taskbus_notifier_assigned_partitions", group=g) for g in groups)
                for p in (first, second)
            ]
            return all(owned) and sum(owned) == 2 * settings.kafka_partitions

        await eventually(split, 60, "both notifiers to own partitions")
        emails = [f"{prefix}-{n}@example.com" for n in range(100)]

        async def stream() -> None:
            for email in emails:
                await publish(broker, settings, USERS_TOPIC, welcome(email))
                await asyncio.sleep(0.04)  # pacing: a stream, not a burst

        publishing = asyncio.create_task(stream())

        def both_sending() -> bool:
            return all(
                metric(p, "taskbus_notifier_emails_sent_total") >= 5 for p in (first, second)
            )

        await eventually(both_sending, 60, "both notifiers to send")
        assert not publishing.done()
        first.kill()
        await publishing

        await eventually(lambda: all(box.count(emails).values()), 90, "every mail")
        taken_over = [
            metric(second, "taskbus_notifier_assigned_partitions", group=g) for g in groups
        ]
        assert taken_over == [settings.kafka_partitions] * 2
        received: dict[str, list[EmailMessage]] = {e: box.to(e) for e in emails}
        # Exactly once per event as the user sees it: one Message-ID per recipient...
        assert all(len({m["Message-ID"] for m in ms}) == 1 for ms in received.values())
        # ...and a physical re-send only for a mail in flight at the SIGKILL (see delivery.py):
        # at most one per consumer of the killed process on the users topic.
        copies = Counter(len(ms) for ms in received.values())
        assert set(copies) <= {1, 2}
        assert copies[2] <= settings.consumers_per_topic
    finally:
        first.stop()
        second.stop()
