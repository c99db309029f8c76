"""Protobuf messages as the JSON Triton's HTTP endpoint answers with.

Proto field names, every scalar and repeated field present (defaults included), 64-bit
integers as JSON numbers (protobuf's own JSON mapping writes them as strings, which Triton's
HTTP clients do not expect), enums by name.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return to_json(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name
    if field.type == FieldDescriptor.TYPE_BYTES:
        return value.decode(errors="replace")
    return value


def to_json(message: Message) -> dict[str, Any]:
    """The message as a JSON-ready dict (maps as objects; sub-messages and oneofs only when
    set, so that e.g. an absent `reshape` stays absent)."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        singular_message = field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated
        if (field.containing_oneof is not None or singular_message) and not message.HasField(
            field.name
        ):
            continue
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {k: _value(value_field, v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [_value(field, v) for v in value]
        else:
            out[field.name] = _value(field, value)
    return out
