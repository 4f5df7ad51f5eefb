"""A local SMTP sink: accepts every message and writes it to `<dir>/<id>.eml`.

`python -m deploy.local.mailsink --port 1025 --dir var/mail`
"""

import argparse
import asyncio
import os
import signal
import uuid
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP


class EmlWriter:
    """aiosmtpd handler: one file per accepted message, written atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        """Store the message exactly as received; readers never see a partial file."""
        name = uuid.uuid4().hex
        tmp = self.directory / f".{name}.tmp"
        tmp.write_bytes(envelope.original_content)
        os.replace(tmp, self.directory / f"{name}.eml")
        return "250 Message accepted for delivery"


async def serve(host: str, port: int, directory: Path) -> None:
    """Serve until SIGTERM or SIGINT."""
    handler = EmlWriter(directory)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="taskbus-mailsink"), host, port
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"mailsink listening on {host}:{port}, writing to {directory}", flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main() -> None:
    """Parse arguments and run the sink."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1025)
    parser.add_argument("--dir", type=Path, default=Path("var/mail"))
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(args.host, args.port, args.dir))


if __name__ == "__main__":
    main()
