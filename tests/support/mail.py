"""Reading the SMTP sink's `.eml` files in tests."""

import asyncio
import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

from tests.support.infra import MAIL_DIR


def messages_to(recipient: str, directory: Path = MAIL_DIR) -> list[EmailMessage]:
    """Every stored message addressed to `recipient` (tests use unique addresses)."""
    found = []
    for path in sorted(directory.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        if recipient.lower() in str(message.get("To", "")).lower():
            found.append(message)
    return found


async def wait_for_mail(recipient: str, count: int = 1, within: float = 30.0) -> list[EmailMessage]:
    """Poll the sink's directory until `count` messages to `recipient` are there."""
    async with asyncio.timeout(within):
        # The condition lives on disk, written by another process: poll it.
        while len(found := messages_to(recipient)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    return found
