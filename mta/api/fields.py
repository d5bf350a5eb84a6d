"""Request-body fields the sending API's routes share.

One job: the checks several route modules make of a JSON body's fields, with
the one error shape (422 validation_error "field: reason", or
missing_required_field).

API:
    invalid(field, reason) -> ApiError          422 validation_error naming the field
    string_field(doc, field, *, max_len, required) -> str | None
        a string of at most max_len characters without control characters;
        None when absent (null counts as absent) and not required
"""

from __future__ import annotations

from typing import Any

from mta.api.http import ApiError

__all__ = ["invalid", "string_field"]


def invalid(field: str, reason: str) -> ApiError:
    return ApiError(422, "validation_error", f"{field}: {reason}")


def string_field(doc: dict[str, Any], field: str, *, max_len: int,
                 required: bool) -> str | None:
    value = doc.get(field)
    if value is None:
        if required:
            raise ApiError(422, "missing_required_field", f"{field}: required")
        return None
    if not isinstance(value, str):
        raise invalid(field, "must be a string")
    if len(value) > max_len:
        raise invalid(field, f"at most {max_len} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise invalid(field, "contains control characters")
    return value
