"""JSON Schemas of every CloudEvent on the bus, generated from the pydantic models behind them.

One schema per type (`task.created.v1`, `task.create.v1`, ...): the CloudEvents envelope with
`type` fixed and `data` the model. Every concrete subclass of `common.events.Payload` (events) and
`common.commands.Command` (commands) is a type, found by walking the class tree, so a new event or
command model is documented without being listed here.
`docs/events/<type>.json` holds the committed copies (`make event-schemas`) and
`common/asyncapi.py` embeds the same schemas in the AsyncAPI document.
"""

import importlib
from typing import Any

from pydantic import BaseModel

from common.events import Envelope

DIALECT = "https://json-schema.org/draft/2020-12/schema"
LOCAL_REFS = "#/$defs/{model}"
# The base classes of what travels as an envelope's `data`, and the class attribute holding the
# CloudEvents type: every concrete subclass is a type on the bus. A module not written yet is
# skipped, so the generator works while a module is being added.
ROOTS = (("common.events", "Payload", "event_type"), ("common.commands", "Command", "command_type"))
SUBJECT = "The id of the Taskbus user the event concerns; also the record's Kafka key."


def _roots() -> list[tuple[type[BaseModel], str]]:
    found = []
    for module_name, class_name, attribute in ROOTS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:  # a missing dependency of a module that exists is a bug
                raise
            continue
        found.append((getattr(module, class_name), attribute))
    return found


def bus_type(model: type[BaseModel]) -> str:
    """The CloudEvents type of an event or command model."""
    for *_, attribute in ROOTS:
        if isinstance(value := getattr(model, attribute, None), str):
            return value
    raise TypeError(f"{model.__name__} names no CloudEvents type")


def model_types() -> dict[str, type[BaseModel]]:
    """Every concrete event and command model by CloudEvents type, sorted by type."""
    found: dict[str, type[BaseModel]] = {}
    for root, attribute in _roots():
        pending = list(root.__subclasses__())
        while pending:
            cls = pending.pop()
            pending.extend(cls.__subclasses__())
            event_type = getattr(cls, attribute, None)
            if event_type is None:
                continue  # an intermediate base with no type of its own
            if found.setdefault(event_type, cls) is not cls:
                raise ValueError(f"{event_type} is defined twice: {found[event_type]}, {cls}")
    return dict(sorted(found.items()))


def cloudevent_schema(
    model: type[BaseModel], ref_template: str = LOCAL_REFS
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The envelope schema with `type` fixed and `data` the model, and the definitions it uses.

    `ref_template` says where the definitions will live (`$defs` of a standalone schema, the
    `components/schemas` of an AsyncAPI document).
    """
    envelope = Envelope.model_json_schema(ref_template=ref_template)
    data = model.model_json_schema(ref_template=ref_template)
    definitions: dict[str, Any] = {**envelope.pop("$defs", {}), **data.pop("$defs", {})}
    definitions[model.__name__] = data
    properties = envelope["properties"]
    properties["type"] = {"const": bus_type(model), "title": "Type", "type": "string"}
    properties["subject"] = {**properties["subject"], "description": SUBJECT}
    properties["data"] = {"$ref": ref_template.format(model=model.__name__)}
    envelope["title"] = bus_type(model)
    envelope["description"] = (model.__doc__ or bus_type(model)).strip()
    return envelope, definitions


def standalone_schema(model: type[BaseModel]) -> dict[str, Any]:
    """One self-contained JSON Schema (2020-12) of a type, as committed under docs/events/."""
    schema, definitions = cloudevent_schema(model)
    return {"$schema": DIALECT, **schema, "$defs": dict(sorted(definitions.items()))}


def all_schemas() -> dict[str, dict[str, Any]]:
    """The standalone schema of every type on the bus, by type."""
    return {event_type: standalone_schema(m) for event_type, m in model_types().items()}
