"""The local SMTP sink stores every accepted message as a whole .eml file."""

from email.message import EmailMessage

import aiosmtplib
import pytest

from tests.support.infra import SMTP_PORT
from tests.support.mail import wait_for_mail

pytestmark = pytest.mark.integration


async def test_sent_message_lands_in_the_mail_dir(prefix: str) -> None:
    recipient = f"{prefix}@example.com"
    message = EmailMessage()
    message["From"] = "noreply@taskbus.test"
    message["To"] = recipient
    message["Subject"] = "hello"
    message.set_content("plain body")
    message.add_alternative("<p>html body</p>", subtype="html")

    await aiosmtplib.send(message, hostname="127.0.0.1", port=SMTP_PORT)

    [stored] = await wait_for_mail(recipient)
    assert stored["Subject"] == "hello"
    parts = {
        part.get_content_type(): part.get_content()
        for part in stored.walk()
        if not part.is_multipart()
    }
    assert parts["text/plain"].strip() == "plain body"
    assert parts["text/html"].strip() == "<p>html body</p>"
