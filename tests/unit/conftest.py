"""Unit tests see no stack: not the Kafka credentials tests/support/infra.py exports."""

import pytest

from tests.support.kafka_auth import OBSERVER_ENV_NAMES


@pytest.fixture(autouse=True)
def _no_stack_kafka_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # Set when the shared broker runs with SASL; settings in a unit test come from the test alone.
    for name in OBSERVER_ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
