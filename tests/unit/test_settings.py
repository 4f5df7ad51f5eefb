"""Settings precedence: service prefix over the shared TASKBUS_ prefix over defaults."""

import pytest

from services.auth.settings import AuthSettings
from services.tasks.settings import TasksSettings


def test_shared_prefix_applies_to_every_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKBUS_KAFKA_BOOTSTRAP", "k:1")
    assert AuthSettings().kafka_bootstrap == "k:1"
    assert TasksSettings().kafka_bootstrap == "k:1"


def test_service_prefix_wins_over_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKBUS_KAFKA_BOOTSTRAP", "shared:1")
    monkeypatch.setenv("AUTH_KAFKA_BOOTSTRAP", "auth:1")
    assert AuthSettings().kafka_bootstrap == "auth:1"
    assert TasksSettings().kafka_bootstrap == "shared:1"


def test_topic_prefix_isolates_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKBUS_TOPIC_PREFIX", "run42.")
    assert TasksSettings().topic("taskbus.tasks") == "run42.taskbus.tasks"


def test_defaults_give_each_service_its_port() -> None:
    assert AuthSettings().port == 8001
    assert TasksSettings().port == 8002
