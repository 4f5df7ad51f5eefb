"""An SMTP relay inside the test process (aiosmtpd), for the notifier's fault tests.

It keeps every accepted message in memory (counted by Message-ID, no directory to scan) and can
hold its answer to QUIT, to freeze a sender in the moment after the relay's 250.
"""

import asyncio
import email
import email.policy
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP


class RecordingRelay:
    """aiosmtpd handler: accepts every message; QUIT waits while `quit_open` is clear."""

    def __init__(self) -> None:
        self.port = 0
        self.messages: list[EmailMessage] = []
        self.quit_open = asyncio.Event()
        self.quit_open.set()
        self.quits_held = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        """Keep the message; the 250 goes out after it is kept, as a real relay's would."""
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 Message accepted for delivery"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        """Answer QUIT, once `quit_open` is set."""
        if not self.quit_open.is_set():
            self.quits_held += 1
        await self.quit_open.wait()
        return "221 Bye"

    def copies(self, needle: str) -> Counter[str]:
        """Message-ID -> copies received, for messages whose To contains `needle`."""
        return Counter(str(m["Message-ID"]) for m in self.messages if needle in str(m["To"]))


@asynccontextmanager
async def recording_relay() -> AsyncIterator[RecordingRelay]:
    """Serve a RecordingRelay on a free port of 127.0.0.1 for the duration of the block."""
    relay = RecordingRelay()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(relay), "127.0.0.1", 0)
    relay.port = int(server.sockets[0].getsockname()[1])
    try:
        yield relay
    finally:
        relay.quit_open.set()
        server.close()
