"""Reading the SMTP sink's `.eml` files in tests.

The sink directory keeps growing with earlier runs' messages, so MailBox reads each new file once,
keeps the raw bytes and parses only the files that mention the recipient.
"""

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

from tests.support.infra import MAIL_DIR
from tests.support.waiting import eventually


class MailBox:
    """Messages in a sink directory, by recipient."""

    def __init__(self, directory: Path = MAIL_DIR) -> None:
        self.directory = directory
        self._raw: dict[str, bytes] = {}

    def _scan(self) -> None:
        for path in self.directory.glob("*.eml"):
            if path.name not in self._raw:
                self._raw[path.name] = path.read_bytes()

    def to(self, recipient: str) -> list[EmailMessage]:
        """Every stored message addressed to `recipient`."""
        self._scan()
        needle = recipient.lower().encode()
        found = []
        for raw in self._raw.values():
            if needle not in raw.lower():
                continue
            message = email.message_from_bytes(raw, policy=email.policy.default)
            if (
                isinstance(message, EmailMessage)
                and recipient.lower() in str(message.get("To", "")).lower()
            ):
                found.append(message)
        return found

    def count(self, recipients: list[str]) -> dict[str, int]:
        """How many messages each recipient has."""
        return {r: len(self.to(r)) for r in recipients}

    async def wait(
        self, recipient: str, count: int = 1, within: float = 30.0
    ) -> list[EmailMessage]:
        """Poll until `count` messages to `recipient` are there."""
        found: list[EmailMessage] = await eventually(
            lambda: len(mails := self.to(recipient)) >= count and mails,
            within,
            f"{count} mail(s) to {recipient}",
        )
        return found


def messages_to(recipient: str, directory: Path = MAIL_DIR) -> list[EmailMessage]:
    """Every stored message addressed to `recipient` (tests use unique addresses)."""
    return MailBox(directory).to(recipient)


async def wait_for_mail(recipient: str, count: int = 1, within: float = 30.0) -> list[EmailMessage]:
    """Poll the sink's directory until `count` messages to `recipient` are there."""
    return await MailBox().wait(recipient, count, within)
