"""The development signing key, shared by every replica through MongoDB."""

import contextlib
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

_DEV_KEY_ID = "dev-signing-key"


class MongoDevKeys:
    """The `dev_keys` collection (one document)."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._keys = db["dev_keys"]

    async def dev_key(self, kid: str, pem: str) -> tuple[str, str]:
        """The shared development key: the first replica's proposal wins, everyone reads it back."""
        # An insert on the unique _id is atomic even on FerretDB: exactly one proposal lands.
        with contextlib.suppress(DuplicateKeyError):
            await self._keys.insert_one({"_id": _DEV_KEY_ID, "kid": kid, "pem": pem})
        doc = await self._keys.find_one({"_id": _DEV_KEY_ID})
        if doc is None:
            raise RuntimeError("development key vanished after insert")
        return str(doc["kid"]), str(doc["pem"])
