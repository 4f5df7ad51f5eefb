"""How long a tasks or notifier process answers 503 at start: its revocation feed's catch-up.

Publishes N user-wide revocations to a fresh (prefixed) users topic on the running Kafka, then
times a RevocationFeed from start until it has caught up. Run:
`uv run --frozen --no-sync python -m bench.bench_revocations [N]`.
"""

import asyncio
import sys
import time
import uuid

from aiokafka import AIOKafkaProducer

from common.clock import utcnow
from common.events import USERS_TOPIC, SessionsRevoked, new_event
from common.kafka import ensure_topics, kafka_options
from common.revocations import RevocationFeed, RevocationList
from common.settings import ServiceSettings


def _event(user: str) -> bytes:
    payload = SessionsRevoked(user_id=user, revoked_before=utcnow(), reason="logout_all")
    return new_event(payload, source="/bench", subject=user).model_dump_json().encode()


async def main(count: int) -> None:
    """Fill the topic, then time the catch-up."""
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    settings = ServiceSettings(service_name="bench", topic_prefix=prefix, kafka_partitions=6)
    await ensure_topics(settings, [USERS_TOPIC])
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        linger_ms=20,
        **kafka_options(settings),
    )
    await producer.start()
    try:
        topic = settings.topic(USERS_TOPIC)
        sent = [
            await producer.send(topic, _event(f"u{i}"), key=f"u{i}".encode()) for i in range(count)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    revocations = RevocationList()
    started = time.perf_counter()
    feed = asyncio.create_task(RevocationFeed(settings, revocations).run())
    while not revocations.caught_up:  # noqa: ASYNC110 - the feed sets a plain flag; 10 ms resolution
        await asyncio.sleep(0.01)
    took = time.perf_counter() - started
    feed.cancel()
    await asyncio.gather(feed, return_exceptions=True)
    print(f"{count} revocations on the topic: caught up in {took:.2f} s, {len(revocations)} known")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000))
