"""Poison on the users topic among good events, all on one partition (one key): undecodable
bytes, a valid envelope with an invalid payload, and an event type this build does not know.

Accounting asserted: every poison record is on the DLQ once, byte for byte, with its reason;
every good mail (including those behind the poison on the same partition) is sent once.
"""

import uuid

import pytest

from common.events import NOTIFIER_DLQ_TOPIC, USERS_TOPIC
from common.kafka import publish
from tests.support.kafka import Record, read_records
from tests.support.notifier import Ledger, mail_id, notifier_process, producer, welcome
from tests.support.smtp import recording_relay
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e


async def test_poison_goes_to_the_dlq_and_the_partition_keeps_flowing(prefix: str) -> None:
    user_id = uuid.uuid4().hex
    good = [welcome(f"{prefix}-{n}@example.com", user_id) for n in range(6)]
    garbage = b"\xff\xfe " + prefix.encode() + b" not an envelope"
    bad_payload = good[0].model_copy(update={"id": uuid.uuid4().hex, "data": {"user_id": 1}})
    unknown = good[0].model_copy(update={"id": uuid.uuid4().hex, "type": "user.archived.v9"})
    poison = [garbage, bad_payload.model_dump_json().encode(), unknown.model_dump_json().encode()]
    ledger = Ledger(prefix)
    async with recording_relay() as relay, producer(prefix) as (broker, settings):
        topic = settings.topic(USERS_TOPIC)
        await publish(broker, settings, USERS_TOPIC, good[0])
        for raw in poison:
            await broker.publish(raw, topic=topic, key=user_id.encode())
        for event in good[1:]:
            await publish(broker, settings, USERS_TOPIC, event)
        notifier = notifier_process(prefix, "poison", relay.port).start()
        try:

            async def done() -> bool:
                return len(relay.copies(prefix)) == len(good) and await ledger.all_sent(good)

            await eventually(done, 90, "every good mail sent and recorded")

            def all_parked(records: list[Record]) -> bool:
                return {value for value, _ in records} >= set(poison)

            parked = await read_records(settings.topic(NOTIFIER_DLQ_TOPIC), all_parked, 30)
        finally:
            notifier.stop()
            await ledger.close()
    copies = relay.copies(prefix)
    reasons = dict(parked)
    print(
        f"poison: {len(poison)} poison records, {len(parked)} on the DLQ "
        f"({[reasons[p]['x-error'][:40] for p in poison]}); {len(good)} good events, "
        f"{len(copies)} mails, {sum(copies.values()) - len(copies)} duplicates"
    )
    assert len(parked) == len(poison)
    assert all(reasons[p]["x-dlq-reason"] == "PoisonMessageError" for p in poison)
    assert all(reasons[p]["x-origin-topic"] == topic for p in poison)
    assert "not a valid envelope" in reasons[garbage]["x-error"]
    assert "invalid user.registered.v1 payload" in reasons[poison[1]]["x-error"]
    assert "unknown event type 'user.archived.v9'" in reasons[poison[2]]["x-error"]
    assert copies == {mail_id(e): 1 for e in good}
