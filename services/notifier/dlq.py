"""Inspect and replay the notifier's dead-letter topic.

`python -m services.notifier.dlq list` prints one JSON line per dead letter (`replayed` tells
whether a bulk replay already took it). `python -m services.notifier.dlq replay` re-queues every
dead letter not replayed yet and moves the replay mark past them; `replay --event-id ID` re-queues
just those entries and leaves the mark alone. Replays go to the first retry tier, which only the
notifier reads, so other consumers of the source topics never see the event twice; a replayed event
that was in fact sent meanwhile is a no-op (idempotent by event id).
Settings come from the environment like the service's (NOTIFIER_*, TASKBUS_*).
"""

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from common.events import NOTIFIER_DLQ_TOPIC
from common.kafka import ensure_topics, kafka_options, make_broker
from services.notifier.events import (
    H_ATTEMPT,
    H_DLQ_AT,
    H_DLQ_ATTEMPTS,
    H_DLQ_REASON,
    H_ERROR,
    H_NOT_BEFORE,
    H_ORIGIN,
    group_id,
    notifier_topics,
    retry_topic,
)
from services.notifier.settings import NotifierSettings

H_REPLAYED_FROM = "x-replayed-from"


@dataclass(frozen=True)
class DeadLetter:
    """One record of the DLQ."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]

    @property
    def event_id(self) -> str | None:
        """The event id, from the headers or, failing that, the body."""
        if "ce_id" in self.headers:
            return self.headers["ce_id"]
        try:
            body = json.loads(self.value)
        except ValueError:
            return None
        return str(body["id"]) if isinstance(body, dict) and "id" in body else None

    def summary(self, replayed: bool) -> dict[str, Any]:
        """What `list` prints."""
        return {
            "partition": self.partition,
            "offset": self.offset,
            "event_id": self.event_id,
            "type": self.headers.get("ce_type"),
            "reason": self.headers.get(H_DLQ_REASON),
            "attempts": self.headers.get(H_DLQ_ATTEMPTS),
            "error": self.headers.get(H_ERROR),
            "origin": self.headers.get(H_ORIGIN),
            "dead_lettered_at_ms": self.headers.get(H_DLQ_AT),
            "replayed": replayed,
        }


class DeadLetters:
    """Reads the whole DLQ as it stands, and the bulk-replay mark per partition."""

    def __init__(self, settings: NotifierSettings) -> None:
        self.settings = settings
        self.topic = settings.topic(NOTIFIER_DLQ_TOPIC)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=group_id(settings, "dlq-replay"),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **kafka_options(settings),
        )

    async def read(self) -> tuple[list[DeadLetter], dict[int, int]]:
        """Every record up to the current end, and the replay mark of each partition."""
        tps = [TopicPartition(self.topic, p) for p in await self._partitions()]
        if not tps:
            return [], {}  # no DLQ topic yet: nothing was ever dead-lettered
        self.consumer.assign(tps)
        marks = {tp.partition: (await self.consumer.committed(tp)) or 0 for tp in tps}
        ends = await self.consumer.end_offsets(tps)
        await self.consumer.seek_to_beginning(*tps)
        letters: list[DeadLetter] = []
        pending = {tp for tp in tps if ends[tp] > 0}
        while pending:
            batch = await self.consumer.getmany(*pending, timeout_ms=1000)
            for tp, records in batch.items():
                for r in records:
                    if r.offset < ends[tp]:
                        headers = {k: v.decode(errors="replace") for k, v in r.headers}
                        letters.append(
                            DeadLetter(tp.partition, r.offset, r.key, r.value or b"", headers)
                        )
            pending = {tp for tp in pending if await self.consumer.position(tp) < ends[tp]}
        return letters, marks

    async def _partitions(self) -> list[int]:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.settings.kafka_bootstrap, **kafka_options(self.settings)
        )
        await admin.start()
        try:
            [described] = await admin.describe_topics([self.topic])
        finally:
            await admin.close()
        return sorted(int(p["partition"]) for p in described["partitions"])

    async def mark(self, letters: Sequence[DeadLetter]) -> None:
        """Move the replay mark past these letters."""
        offsets: dict[TopicPartition, int] = {}
        for letter in letters:
            tp = TopicPartition(self.topic, letter.partition)
            offsets[tp] = max(offsets.get(tp, 0), letter.offset + 1)
        if offsets:
            await self.consumer.commit(offsets)


async def list_letters(settings: NotifierSettings, out: TextIO) -> int:
    """Print every dead letter as a JSON line; returns how many there are."""
    dlq = DeadLetters(settings)
    await dlq.consumer.start()
    try:
        letters, marks = await dlq.read()
    finally:
        await dlq.consumer.stop()
    for letter in letters:
        out.write(json.dumps(letter.summary(letter.offset < marks[letter.partition])) + "\n")
    return len(letters)


async def replay(settings: NotifierSettings, event_ids: Sequence[str], out: TextIO) -> int:
    """Re-queue dead letters through the first retry tier; returns how many were replayed."""
    await ensure_topics(settings, notifier_topics(settings))
    dlq = DeadLetters(settings)
    broker = make_broker(settings)
    await dlq.consumer.start()
    await broker.start()
    try:
        letters, marks = await dlq.read()
        if event_ids:
            chosen = [x for x in letters if x.event_id in set(event_ids)]
        else:
            chosen = [x for x in letters if x.offset >= marks[x.partition]]
        for letter in chosen:
            await broker.publish(
                letter.value,
                topic=settings.topic(retry_topic(0)),
                key=letter.key,
                headers=_replay_headers(letter),
            )
            replayed = {"event_id": letter.event_id, "partition": letter.partition}
            out.write(json.dumps({**replayed, "offset": letter.offset}) + "\n")
        if not event_ids:
            await dlq.mark(chosen)
    finally:
        await broker.stop()
        await dlq.consumer.stop()
    return len(chosen)


def _replay_headers(letter: DeadLetter) -> dict[str, str]:
    kept = {
        k: v
        for k, v in letter.headers.items()
        if k not in (H_DLQ_REASON, H_DLQ_ATTEMPTS, H_DLQ_AT, H_ERROR, H_NOT_BEFORE, H_ATTEMPT)
    }
    return kept | {
        H_ATTEMPT: "2",
        H_NOT_BEFORE: str(int(time.time() * 1000)),
        H_REPLAYED_FROM: f"{letter.partition}:{letter.offset}",
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m services.notifier.dlq", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="print every dead letter as a JSON line")
    again = commands.add_parser("replay", help="re-queue dead letters")
    again.add_argument("--event-id", action="append", default=[], help="only this event (repeat)")
    args = parser.parse_args(argv)
    settings = NotifierSettings()
    if args.command == "list":
        asyncio.run(list_letters(settings, sys.stdout))
    else:
        count = asyncio.run(replay(settings, args.event_id, sys.stdout))
        sys.stderr.write(f"replayed {count} dead letter(s)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
