"""Small builders the OpenAPI modules share (openapi.py, openapi_tenants.py,
openapi_shaping.py): a schema reference, a JSON response, an error response.

Public API:
    ref(name) -> {"$ref": "#/components/schemas/NAME"}
    json_response(schema, description) -> an OpenAPI response object
    error_response(description) -> a response with the shared Error schema
    obj(props, required=None, **extra) -> an object schema
"""

from __future__ import annotations

from typing import Any

__all__ = ["error_response", "json_response", "obj", "ref"]


def obj(props: dict[str, Any], required: list[str] | None = None, **extra: Any
        ) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props, **extra}
    if required:
        out["required"] = required
    return out


def ref(name: str) -> dict[str, str]:
    return {"$ref": "#/components/schemas/" + name}


def json_response(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error_response(description: str) -> dict[str, Any]:
    return json_response(ref("Error"), description)
