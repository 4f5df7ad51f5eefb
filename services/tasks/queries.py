"""The find filters and sort orders of list pages (keyset pagination), and their indexes."""

from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING

from services.tasks.domain import PRIORITY_RANK, CursorPosition, ListQuery, escape_regex

Doc = dict[str, Any]
# "No due date" sorts after every real date (ascending), the same way on FerretDB and MongoDB.
NO_DUE = datetime(9999, 12, 31, tzinfo=UTC)
# The index that serves each sort (hinted: MongoDB then never picks a blocking sort).
SORT_INDEX = {
    "created_at": "owner_created_at",
    "due_at": "owner_due_at",
    "priority": "owner_priority",
}


def list_filter(owner: str, query: ListQuery, after: CursorPosition | None) -> Doc:
    """The find filter of one list page (keyset pagination after `after`)."""
    base: Doc = {"owner": owner, "deleted": False}
    if query.status:
        base["status"] = query.status
    if query.priority:
        base["priority"] = PRIORITY_RANK[query.priority]
    if query.tag:
        base["tags"] = query.tag
    due: Doc = {}
    if query.due_before:
        due["$lt"] = query.due_before
    if query.due_after:
        due["$gt"] = query.due_after
        due.setdefault("$lt", NO_DUE)
    if due:
        base["due_at"] = due
    if query.q:
        base["title"] = {"$regex": escape_regex(query.q), "$options": "i"}
    if after is None:
        return base
    op = "$lt" if query.descending else "$gt"
    field = query.sort_field
    keyset = {"$or": [{field: {op: after.value}}, {field: after.value, "_id": {op: after.id}}]}
    return {"$and": [base, keyset]}


def list_sort(query: ListQuery) -> list[tuple[str, int]]:
    """Sort spec: the field, then _id, same direction (a total order for keyset paging)."""
    direction = DESCENDING if query.descending else ASCENDING
    return [(query.sort_field, direction), ("_id", direction)]
