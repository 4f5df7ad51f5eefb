"""Event producers in tests and benchmarks: the accounts a command may name, and its topics."""

from aiokafka import AIOKafkaProducer

from common.events import USERS_TOPIC, UserRegistered, commands_topic, new_event
from common.kafka import ensure_topics
from common.settings import ServiceSettings
from tests.support.infra import KAFKA_BOOTSTRAP
from tests.support.kafka_auth import client_options


async def announce_users(prefix: str, users: list[str], producers: list[str]) -> None:
    """Announce the accounts on the users topic, as auth does, and make the producers' topics."""
    settings = ServiceSettings(kafka_bootstrap=KAFKA_BOOTSTRAP, topic_prefix=f"{prefix}.")
    # Command topics are made with their producer (make producer), not by the tasks service.
    await ensure_topics(settings, [USERS_TOPIC, *(commands_topic(p) for p in producers)])
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA_BOOTSTRAP, **client_options())
    await producer.start()
    try:
        for user in users:
            payload = UserRegistered(user_id=user, email=f"{user}@example.com", name=user)
            event = new_event(payload, source="/auth", subject=user)
            await producer.send_and_wait(
                settings.topic(USERS_TOPIC), event.model_dump_json().encode(), key=user.encode()
            )
    finally:
        await producer.stop()
