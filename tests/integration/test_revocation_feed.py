"""The services' revocation feed on real Kafka: replays the last token lifetime, then follows."""

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer

from common.clock import utcnow
from common.events import USERS_TOPIC, SessionsRevoked, new_event
from common.kafka import ensure_topics
from common.revocations import KEEP_MS, RevocationFeed, RevocationList, now_ms
from common.settings import ServiceSettings
from common.tokens import AccessClaims, RevocationsUnknownError
from tests.support.infra import KAFKA_BOOTSTRAP
from tests.support.kafka_auth import client_options
from tests.support.waiting import eventually


def _settings() -> ServiceSettings:
    prefix = f"rvf{uuid.uuid4().hex[:10]}."
    return ServiceSettings(
        service_name="revocation-test",
        kafka_bootstrap=KAFKA_BOOTSTRAP,
        topic_prefix=prefix,
        kafka_partitions=2,
    )


def _claims(user: str, session: str = "s-old") -> AccessClaims:
    began = now_ms() - 60_000  # a session begun a minute ago, refreshed just now
    iat = now_ms() // 1000
    return AccessClaims(
        iss="i", aud="a", sub=user, exp=iat + 900, iat=iat, nbf=iat, jti="j", sid=session, sst=began
    )


def _logout_all(user: str) -> bytes:
    payload = SessionsRevoked(user_id=user, revoked_before=utcnow(), reason="logout_all")
    return new_event(payload, source="/test", subject=user).model_dump_json().encode()


@pytest.fixture
async def producer() -> AsyncIterator[AIOKafkaProducer]:
    kafka = AIOKafkaProducer(bootstrap_servers=KAFKA_BOOTSTRAP, acks="all", **client_options())
    await kafka.start()
    try:
        yield kafka
    finally:
        await kafka.stop()


async def test_a_revocation_from_before_the_start_is_replayed_one_older_than_a_token_is_not(
    producer: AIOKafkaProducer,
) -> None:
    settings = _settings()
    await ensure_topics(settings, [USERS_TOPIC])
    topic = settings.topic(USERS_TOPIC)
    # Stamped past the longest token lifetime: every token it covered has expired.
    ancient = now_ms() - KEEP_MS - 60_000
    await producer.send_and_wait(
        topic, _logout_all("u-ancient"), key=b"u-ancient", timestamp_ms=ancient
    )
    await producer.send_and_wait(topic, _logout_all("u-recent"), key=b"u-recent")

    revocations = RevocationList()
    with pytest.raises(RevocationsUnknownError):
        revocations.refuses(_claims("u-recent"))
    feed = asyncio.create_task(RevocationFeed(settings, revocations).run())
    try:
        await eventually(lambda: revocations.caught_up, what="the feed to catch up")
        assert revocations.refuses(_claims("u-recent"))
        assert not revocations.refuses(_claims("u-ancient"))  # not replayed: nothing to refuse
        assert not revocations.refuses(_claims("u-other"))

        # Followed after catch-up: a revocation published now is refused within moments.
        await producer.send_and_wait(topic, _logout_all("u-later"), key=b"u-later")
        await eventually(lambda: revocations.refuses(_claims("u-later")), what="u-later refused")
    finally:
        feed.cancel()
        await asyncio.gather(feed, return_exceptions=True)
