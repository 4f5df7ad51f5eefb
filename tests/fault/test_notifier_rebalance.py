"""A consumer rebalance mid-stream: a second notifier joins the group, then the first leaves
(SIGTERM), while registrations keep arriving.

Accounting asserted: mails received (unique Message-IDs) = events published (lost 0), copies
beyond one = 0, both processes sent some, and the one left owns every partition.
"""

import asyncio

import httpx
import pytest

from common.events import USERS_TOPIC
from common.kafka import publish
from tests.support.metrics import metric_sum
from tests.support.notifier import Ledger, mail_id, notifier_process, producer, welcome
from tests.support.processes import ServiceProcess
from tests.support.smtp import recording_relay
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
EVENTS = 150


async def _metric(proc: ServiceProcess, name: str, **labels: str) -> float:
    async with httpx.AsyncClient(base_url=proc.url, timeout=5) as http:
        return metric_sum((await http.get("/metrics")).text, name, **labels)


async def test_a_notifier_joining_then_one_leaving_mid_stream_loses_and_repeats_nothing(
    prefix: str,
) -> None:
    events = [welcome(f"{prefix}-{n}@example.com") for n in range(EVENTS)]
    group = f"{prefix}.notifier.users"
    ledger = Ledger(prefix)
    async with recording_relay() as relay, producer(prefix) as (broker, settings):
        first = notifier_process(prefix, "rebalance-1", relay.port).start()
        second = notifier_process(prefix, "rebalance-2", relay.port)
        try:
            await asyncio.to_thread(first.wait_ready, 90)

            joined, left = asyncio.Event(), asyncio.Event()

            async def stream() -> None:
                # A third of the events before each membership change is over, so events are
                # arriving while the group rebalances however long a process takes to start.
                thirds = [events[:50], events[50:100], events[100:]]
                for gate, part in zip([None, joined, left], thirds, strict=True):
                    if gate is not None:
                        await gate.wait()
                    for event in part:
                        await publish(broker, settings, USERS_TOPIC, event)
                        await asyncio.sleep(0.08)  # pacing: a stream, not a burst

            publishing = asyncio.create_task(stream())
            await eventually(lambda: len(relay.copies(prefix)) >= 10, 60, "10 mails")
            second.start()
            await asyncio.to_thread(second.wait_ready, 90)

            async def both_own() -> bool:
                owned = [
                    await _metric(p, "taskbus_notifier_assigned_partitions", group=group)
                    for p in (first, second)
                ]
                return all(owned)

            await eventually(both_own, 60, "the group to rebalance onto both notifiers")
            joined_at = len(relay.copies(prefix))
            joined.set()
            sent_by_first = await _metric(first, "taskbus_notifier_emails_sent_total")
            await eventually(lambda: len(relay.copies(prefix)) >= joined_at + 10, 60, "10 more")
            await asyncio.to_thread(first.stop)  # leaves the group: a second rebalance
            left_at = len(relay.copies(prefix))
            left.set()
            await publishing

            async def done() -> bool:
                return len(relay.copies(prefix)) == EVENTS and await ledger.all_sent(events)

            await eventually(done, 120, f"all {EVENTS} mails sent and recorded")
            sent_by_second = await _metric(second, "taskbus_notifier_emails_sent_total")
            owned = await _metric(second, "taskbus_notifier_assigned_partitions", group=group)
        finally:
            first.stop()
            second.stop()
            await ledger.close()
    copies = relay.copies(prefix)
    duplicates = sum(copies.values()) - len(copies)
    print(
        f"rebalance: {EVENTS} events, joined at {joined_at} mails, first left at {left_at}; "
        f"sent by first {sent_by_first:.0f}+, by second {sent_by_second:.0f}; "
        f"{len(copies)} received, lost {EVENTS - len(copies)}, duplicates={duplicates}"
    )
    assert set(copies) == {mail_id(e) for e in events}
    assert duplicates == 0
    assert sent_by_first > 0
    assert sent_by_second > 0
    assert owned == settings.kafka_partitions
