"""notification.send.v1 (issue 13): a registered template to a user id, within the user's
preferences and send cap, mailed once per command, every command answered.

A real notifier process, real Kafka, FerretDB and the SMTP sink.
"""

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.producer import CommandProducer
from common.commands import SEND_NOTIFICATION, Notice, SendNotification
from common.events import USERS_TOPIC, Envelope, answers_topic, commands_topic
from common.kafka import ensure_topics
from common.settings import ServiceSettings
from tests.support.infra import KAFKA_BOOTSTRAP, STATE_DIR, free_port, infra_env
from tests.support.kafka import collect_events
from tests.support.kafka_auth import client_options
from tests.support.mail import messages_to, wait_for_mail
from tests.support.notifier import producer as users_producer
from tests.support.notifier import welcome
from tests.support.processes import ServiceProcess
from tests.support.tokens import SigningKey

pytestmark = pytest.mark.e2e


def _notice(n: int) -> SendNotification:
    return SendNotification(
        template="notice", params=Notice(subject=f"Invoice {n} is ready", message="See the portal.")
    )


async def test_notices_obey_preferences_and_the_cap_and_each_command_is_mailed_once(
    prefix: str, tmp_path: Path
) -> None:
    settings = ServiceSettings(kafka_bootstrap=KAFKA_BOOTSTRAP, topic_prefix=f"{prefix}.")
    await ensure_topics(settings, [USERS_TOPIC, commands_topic("billing")])
    producers = tmp_path / "producers.json"
    producers.write_text(json.dumps({"billing": {"types": [SEND_NOTIFICATION], "users": "*"}}))
    key = SigningKey.generate()
    port = free_port()
    env = {
        **infra_env(prefix),
        "NOTIFIER_PORT": str(port),
        "NOTIFIER_JWKS_JSON": json.dumps(key.jwks()),
        "NOTIFIER_PRODUCERS_FILE": str(producers),
        "NOTIFIER_COMMANDS_METADATA_MAX_AGE_MS": "1000",
        "NOTIFIER_RATE_LIMIT_COUNT": "2",
        "TASKBUS_KAFKA_PARTITIONS": "2",
    }
    log = STATE_DIR / "log" / "tests" / f"{prefix}-notifier.log"
    notifier = ServiceProcess("services.notifier", port, env, log).start()
    mailbox, quiet = f"ada-{uuid.uuid4().hex[:8]}@example.com", f"bo-{uuid.uuid4().hex[:8]}@x.org"
    ada, bo = welcome(mailbox), welcome(quiet)
    try:
        notifier.wait_ready()
        async with users_producer(prefix) as (broker, producer_settings):
            for event in (ada, bo):
                await broker.publish(
                    event, topic=producer_settings.topic(USERS_TOPIC), key=event.key
                )
        await wait_for_mail(mailbox)  # the welcome: the notifier knows ada's address now
        await wait_for_mail(quiet)
        token, _ = key.mint(bo.subject)
        async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as api:
            answered = await api.put(
                "/api/notifications/preferences",
                json={"reminders": True, "notices": False},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert answered.status_code == 200, answered.text
        async with CommandProducer(
            "billing", KAFKA_BOOTSTRAP, topic_prefix=f"{prefix}.", **client_options()
        ) as billing:
            sent = [billing.envelope(ada.subject, _notice(n)) for n in range(3)]
            for envelope in [*sent, sent[0]]:  # the first one re-sent
                await billing.send(envelope)
            opted_out = await billing.send(billing.envelope(bo.subject, _notice(9)))
            unknown = await billing.send(billing.envelope("nobody", _notice(9)))
            wanted = {*(e.id for e in sent), opted_out, unknown}
            answers = await collect_events(
                f"{prefix}.{answers_topic('billing')}",
                lambda found: (
                    wanted <= {e.causationid for e in found}
                    and [e.causationid for e in found].count(sent[0].id) == 2
                ),
            )
    finally:
        notifier.stop()

    first: dict[str, list[Envelope]] = {}
    for answer in answers:
        first.setdefault(answer.causationid or "", []).append(answer)
    assert [a.type for a in first[sent[0].id]] == ["notification.sent.v1"] * 2
    assert len({a.id for a in first[sent[0].id]}) == 1  # the re-send's answer is the same event
    assert first[sent[1].id][0].type == "notification.sent.v1"
    _rejected(first[sent[2].id][0], "send-cap", 429)
    _rejected(first[opted_out][0], "opted-out", 409)
    _rejected(first[unknown][0], "unknown-user", 422)
    # The answers went out after the mails: what the sink holds now is final.
    mails = messages_to(mailbox)
    subjects = sorted(str(m["Subject"]) for m in mails)
    assert subjects == ["Invoice 0 is ready", "Invoice 1 is ready", "Welcome to Taskbus"]
    assert [m["X-Taskbus-Kind"] for m in mails].count("notice") == 2
    assert len(messages_to(quiet)) == 1  # only the welcome


def _rejected(answer: Envelope, kind: str, status: int) -> None:
    problem: dict[str, Any] = answer.data["problem"]
    assert answer.type == "command.rejected.v1"
    assert (problem["type"].rsplit("/", 1)[1], problem["status"]) == (kind, status)
