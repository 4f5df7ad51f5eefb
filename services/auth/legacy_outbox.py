"""Start-up upgrade of outboxes written before common.outbox, so an upgrade loses no event.

Auth used to store `{"id", "topic", "json"}` entries, mark documents with `outbox_at` and lease
them with `outbox_lease`; the relay now reads `{"id", "topic", "event"}` under `outbox_pending`.
"""

import contextlib
import json
from typing import Any

from pymongo.errors import OperationFailure

from common.outbox import OUTBOX, PENDING
from services.auth.locked import LockedCollection

Doc = dict[str, Any]
_LEGACY_MARK = "outbox_at"


def _reshaped(item: Doc) -> Doc:
    if "json" not in item:
        return item
    return {"id": item["id"], "topic": item["topic"], "event": json.loads(item["json"])}


async def upgrade(docs: LockedCollection) -> int:
    """Re-shape and re-mark every legacy outbox, drop the old index; how many documents moved."""
    moved = 0
    async for doc in docs.collection.find({_LEGACY_MARK: {"$exists": True}}, {OUTBOX: 1}):
        update = {
            "$set": {OUTBOX: [_reshaped(item) for item in doc.get(OUTBOX, [])], PENDING: True},
            "$unset": {_LEGACY_MARK: "", "outbox_lease": ""},
        }
        # Matching the array read: an entry pushed meanwhile (MongoDB, other replica) is not lost.
        read = doc.get(OUTBOX, {"$exists": False})
        if await docs.update(doc["_id"], update, **{OUTBOX: read}):
            moved += 1
    with contextlib.suppress(OperationFailure):  # absent on a fresh database
        await docs.collection.drop_index(f"{_LEGACY_MARK}_1")
    return moved
