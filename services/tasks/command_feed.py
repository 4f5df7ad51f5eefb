"""The tasks side of the command topics: read commands, follow the users topic, relay the ledger.

- `common.command_feed.CommandFeed` reads every `taskbus.commands.<producer>` topic in the group
  `tasks.commands` and hands each record to services/tasks/commands.py.
- `UserFeed` records the user ids of `user.registered.v1` (commit after the write), which is how
  the tasks service knows that a command's user exists.
- `ledger_relay` publishes the command ledger's answers (services/tasks/ledger.py).
"""

import asyncio
import time
from collections.abc import Coroutine
from datetime import timedelta
from functools import partial
from typing import Any

import structlog
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker
from pydantic import ValidationError
from pymongo.errors import PyMongoError

from common.clock import utcnow
from common.command_feed import CommandFeed
from common.command_feed import consumer as command_consumer
from common.commands import Policies
from common.events import (
    USERS_TOPIC,
    Envelope,
    UserRegistered,
)
from common.kafka import ensure_topics, publish
from common.outbox import OutboxSource
from common.relay import OutboxRelay
from services.tasks.commands import CommandHandler
from services.tasks.events import backlog_full, relay_over
from services.tasks.ledger import CommandLedger, UserDirectory
from services.tasks.locks import DocLocks
from services.tasks.quota import TaskQuota
from services.tasks.settings import TasksSettings
from services.tasks.storage import TaskStore

log = structlog.get_logger(__name__)
RETRY_S = 2.0
PRUNE_EVERY_S = 3600.0


class UserFeed:
    """Follows the users topic into the user directory (from the beginning, for ever)."""

    def __init__(self, settings: TasksSettings, users: UserDirectory) -> None:
        self._settings = settings
        self._users = users

    async def run(self) -> None:
        """Record every registered user id until cancelled."""
        while True:
            consumer = command_consumer(self._settings, "tasks.users")
            try:
                await ensure_topics(self._settings, [USERS_TOPIC])
                await consumer.start()
                consumer.subscribe([self._settings.topic(USERS_TOPIC)])
                while True:
                    started_ms = int(time.time() * 1000)
                    batch = await consumer.getmany(timeout_ms=500)
                    records = [r for rs in batch.values() for r in rs]
                    if records:
                        await self._users.add([u for r in records if (u := _registered(r))])
                        await consumer.commit()
                    assigned = list(consumer.assignment())
                    ends = await consumer.end_offsets(assigned) if assigned else {}
                    if assigned and all([await consumer.position(tp) >= ends[tp] for tp in ends]):
                        # Everything registered before this round began is in the directory.
                        await self._users.caught_up(started_ms)
            except Exception as exc:  # noqa: BLE001 - the feed must outlive Kafka and Mongo outages
                log.warning("user feed failed; restarting", error=repr(exc)[:300])
                await asyncio.sleep(RETRY_S)
            finally:
                await consumer.stop()


def _registered(record: ConsumerRecord[bytes, bytes]) -> str | None:
    try:
        event = Envelope.model_validate_json(record.value or b"")
        if event.type != UserRegistered.event_type:
            return None
        return UserRegistered.model_validate(event.data).user_id
    except ValidationError:
        return None  # not ours to judge: the notifier dead-letters malformed user events


async def prune_forever(ledger: CommandLedger, settings: TasksSettings) -> None:
    """Hourly, forget the ledger's entries older than `commands_retention_s`."""
    while True:
        try:
            before = utcnow() - timedelta(seconds=settings.commands_retention_s)
            log.info("command ledger pruned", removed=await ledger.prune(before))
        except PyMongoError:
            log.warning("command ledger pruning failed; trying again later", exc_info=True)
        await asyncio.sleep(PRUNE_EVERY_S)


def ledger_relay(
    ledger: CommandLedger, locks: DocLocks, broker: KafkaBroker, settings: TasksSettings
) -> OutboxRelay:
    """The relay of the command ledger's answers (its leases live with the task relay's)."""
    source = OutboxSource(ledger.collection)
    return relay_over(source, partial(publish, broker, settings), locks, settings, "tasks-commands")


def command_loops(
    store: TaskStore,
    broker: KafkaBroker,
    settings: TasksSettings,
    tasks_relay: OutboxRelay,
    quota: TaskQuota,
) -> list[Coroutine[Any, Any, None]]:
    """The background loops of the command topics, wired to the tasks store and relay."""
    db = store.tasks.database
    ledger, users = CommandLedger(db), UserDirectory(db)
    answers = ledger_relay(ledger, store.locks, broker, settings)
    handler = CommandHandler(
        store,
        ledger,
        users,
        Policies(settings.producers_file),
        settings,
        tasks_written=partial(tasks_relay.wrote, store.tasks.name),
        ledger_written=partial(answers.wrote, ledger.collection.name),
        backlog_full=partial(backlog_full, tasks_relay, settings),
        quota=quota,
    )
    feed = CommandFeed(
        settings,
        "tasks.commands",
        handler.handle,
        handler.policies,
        metadata_max_age_ms=settings.commands_metadata_max_age_ms,
        batch=settings.commands_batch,
    )
    loops = [feed.run(), UserFeed(settings, users).run(), prune_forever(ledger, settings)]
    if settings.relay_enabled:
        loops.append(answers.run())
    return loops
