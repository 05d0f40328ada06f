"""The route table and the OpenAPI 3.1 document generated from it.

Every route of the web app is a `Route`: the app registers exactly these, the request parser
reads its query, body and path-parameter definitions from them, and `build_document` turns the
same objects into `/api/v1/openapi.json`, so the document cannot drift from what is served."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from web.schemas import INT32_MAX, ErrorOut

if TYPE_CHECKING:
    from web.http import Call

API_PREFIX = "/api/v1"
API_TITLE = "FaceChain Bot admin API"
API_VERSION = "1.0.0"
_PATH_PARAM = re.compile(r"\{(\w+)\}")

Handler = Callable[["Call"], Awaitable[BaseModel | web.StreamResponse | None]]


@dataclass(frozen=True)
class FileField:
    """One file part of a multipart upload."""

    name: str
    description: str
    max_bytes: int
    required: bool = True
    media_types: tuple[str, ...] = ("application/octet-stream",)


@dataclass(frozen=True)
class Multipart:
    """A multipart/form-data body: file parts plus text fields validated by `fields`."""

    files: tuple[FileField, ...]
    fields: type[BaseModel]


@dataclass(frozen=True)
class Route:
    """One HTTP route: how it is served and how it is documented."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    auth: bool = True
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    multipart: Multipart | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    # Path parameters are integers; (minimum, maximum) per name, INT32 ids unless given.
    path_bounds: dict[str, tuple[int, int]] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    # Non-JSON success bodies (metrics text, empty webhook answers).
    media_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    # Checked before anything is parsed (e.g. the Telegram secret header); raises to refuse.
    guard: Callable[[web.Request], None] | None = None
    # The Mini App's API: `Authorization: tma <initData>` (its guard checks it), not the token.
    tma: bool = False

    @property
    def operation_id(self) -> str:
        return self.handler.__name__

    @property
    def path_params(self) -> list[str]:
        return _PATH_PARAM.findall(self.path)

    def bounds(self, name: str) -> tuple[int, int]:
        return self.path_bounds.get(name, (1, INT32_MAX))


def aiohttp_path(route: Route) -> str:
    """The path as aiohttp registers it: integer parameters match digits only, so a literal
    sibling (`/styles/order`) answers 405 for other methods instead of parsing "order" as an id."""
    return _PATH_PARAM.sub(lambda m: "{" + m.group(1) + r":\d+}", route.path)


_ERROR_TEXT = {
    400: "Malformed request (bad JSON, bad parameter)",
    401: "Missing or wrong credentials (bearer token, or the Mini App's init data)",
    403: "Forbidden",
    404: "Not found",
    409: "Conflicts with the current state",
    413: "Body too large",
    415: "Unsupported content type",
    422: "Validation failed; `details.errors` says why",
    429: "Too many failed authentications from this address",
    503: "A dependency is not available",
}


def _security(route: Route) -> list[dict[str, list[str]]]:
    if route.auth:
        return [{"bearerAuth": []}]
    if route.tma:
        return [{"tmaAuth": []}]
    return []


def _collect_models(routes: Sequence[Route]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    models: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {
        (ErrorOut, "serialization"): None
    }
    for route in routes:
        if route.body is not None:
            models[(route.body, "validation")] = None
        if route.multipart is not None:
            models[(route.multipart.fields, "validation")] = None
        if route.response is not None:
            models[(route.response, "serialization")] = None
    return list(models)


def _non_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter cannot be null; drop the null branch of `X | None`."""
    variants = schema.get("anyOf")
    if variants:
        rest = [v for v in variants if v.get("type") != "null"]
        if len(rest) == 1:
            merged = {k: v for k, v in schema.items() if k != "anyOf"}
            if merged.get("default", "") is None:
                del merged["default"]
            merged.update(rest[0])
            return merged
    return schema


def _query_parameters(model: type[BaseModel], defs: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs.update(schema.get("$defs", {}))
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop = _non_null(dict(prop))
        prop.pop("title", None)
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
        }
        if "description" in prop:
            param["description"] = prop["description"]
        params.append(param)
    return params


def _multipart_schema(spec: Multipart, defs: dict[str, Any]) -> dict[str, Any]:
    schema = spec.fields.model_json_schema(ref_template="#/components/schemas/{model}")
    defs.update(schema.get("$defs", {}))
    properties = dict(schema.get("properties", {}))
    required = list(schema.get("required", []))
    encoding: dict[str, Any] = {}
    for part in spec.files:
        properties[part.name] = {
            "type": "string",
            "format": "binary",
            "contentMediaType": part.media_types[0],
            "description": f"{part.description} (at most {part.max_bytes} bytes)",
        }
        encoding[part.name] = {"contentType": ", ".join(part.media_types)}
        if part.required:
            required.append(part.name)
    return {
        "schema": {
            "type": "object",
            "properties": properties,
            "required": required,
            # The fields model refuses unknown fields, and so does the document.
            "additionalProperties": False,
        },
        "encoding": encoding,
    }


def _ref(mapping: dict[Any, Any], model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
    ref: dict[str, Any] = mapping[(model, mode)]
    return ref


def build_document(routes: Sequence[Route], *, server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document describing exactly these routes."""
    mapping, top = models_json_schema(
        _collect_models(routes), ref_template="#/components/schemas/{model}"
    )
    defs: dict[str, Any] = dict(top.get("$defs", {}))
    paths: dict[str, dict[str, Any]] = {}
    error_ref = _ref(mapping, ErrorOut, "serialization")
    for route in routes:
        op: dict[str, Any] = {
            "operationId": route.operation_id,
            "summary": route.summary,
            "tags": [route.tag],
            "security": _security(route),
        }
        params: list[dict[str, Any]] = []
        for name in route.path_params:
            low, high = route.bounds(name)
            params.append(
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "schema": {"type": "integer", "minimum": low, "maximum": high},
                }
            )
        if route.query is not None:
            params.extend(_query_parameters(route.query, defs))
        for header, description in route.headers:
            params.append(
                {
                    "name": header,
                    "in": "header",
                    "required": True,
                    "description": description,
                    "schema": {"type": "string"},
                }
            )
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": _ref(mapping, route.body, "validation")}
                },
            }
        elif route.multipart is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"multipart/form-data": _multipart_schema(route.multipart, defs)},
            }
        success: dict[str, Any] = {"description": "Success"}
        if route.response is not None:
            success["content"] = {
                "application/json": {"schema": _ref(mapping, route.response, "serialization")}
            }
        elif route.status != 204 and route.media_type != "application/json":
            success["content"] = {route.media_type: {"schema": {"type": "string"}}}
        responses: dict[str, Any] = {str(route.status): success}
        codes = set(route.errors)
        if route.auth:
            codes |= {401, 429, 503}
        if route.tma:
            codes |= {401, 403}
        if route.query is not None or route.body is not None or route.multipart is not None:
            codes |= {400, 422}
        if route.body is not None:
            codes |= {413, 415}
        if route.path_params:
            codes |= {400, 404}
        for code in sorted(codes):
            responses[str(code)] = {
                "description": _ERROR_TEXT.get(code, "Error"),
                "content": {"application/json": {"schema": error_ref}},
            }
        op["responses"] = responses
        paths.setdefault(route.path, {})[route.method.lower()] = op
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": API_TITLE,
            "version": API_VERSION,
            "description": "Admin API of FaceChain Bot. Bearer token from ADMIN_TOKEN; every "
            "mutating call is written to the audit log.",
        },
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "tmaAuth": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`tma <initData>`: the Mini App's launch data, signed by "
                    "Telegram (validated with the bot token; `auth_date` at most "
                    "MINIAPP_INIT_DATA_MAX_AGE seconds old)",
                },
            },
        },
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document
