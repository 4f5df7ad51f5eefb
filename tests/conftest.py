"""Fixtures shared by every test layer."""

import uuid

import pytest


@pytest.fixture
def prefix() -> str:
    """A unique name for this test's topics, databases and Redis keys."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def session_prefix() -> str:
    """A unique name shared by the service processes of one test session."""
    return f"s{uuid.uuid4().hex[:12]}"
