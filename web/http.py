"""Request plumbing shared by every route: the error middleware, parsing driven by the route
table (query, JSON body, multipart, path ids) and JSON responses.

Handlers raise typed errors (`core.errors.AppError`, `facechain.errors.FaceChainError`);
the one middleware here turns their `code` into an HTTP status and a JSON body
`{"error": {"code", "message", "details"}}`. Anything else is logged and answered 500."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from core.blobstore import BlobStore
from core.errors import AppError, NotFound, ValidationFailed
from core.settings import AppConfig
from db.session import Database
from domain.audit import API_ACTOR
from domain.outbox import Publisher, transact_async
from facechain.errors import FaceChainError
from web.keys import AUTH, BLOBS, CONFIG, DB, METRICS, PUBLISHER
from web.openapi import Multipart, Route
from web.schemas import ErrorBody, ErrorOut

logger = logging.getLogger(__name__)

# Error code -> HTTP status. Codes not listed are client errors (400) for AppError and
# unprocessable input (422) for engine errors, except `internal` (500).
STATUS_BY_CODE: dict[str, int] = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "banned": 403,
    "not_found": 404,
    "blob_missing": 404,
    "result_expired": 410,
    "illegal_transition": 409,
    "conflict": 409,
    "ambiguous_user": 409,
    "reconcile_running": 409,
    "active_job_exists": 409,
    "quota_exceeded": 409,
    "credits_needed": 409,
    "payment_refused": 409,
    "insufficient_credits": 409,
    "selfie_required": 409,
    "style_unavailable": 404,
    "result_unavailable": 404,
    "too_large": 413,
    "image_too_large": 413,
    "unsupported_media_type": 415,
    "invalid": 422,
    "invalid_lora": 422,
    "not_an_image": 422,
    "unsafe_image": 422,
    "rate_limited": 429,
    "internal": 500,
    "config": 500,
    "admin_disabled": 503,
    "unavailable": 503,
    "engine_unavailable": 503,
    "weights_missing": 503,
}


class BadRequest(AppError):
    code = "bad_request"


class PayloadTooLarge(AppError):
    code = "too_large"


class UnsupportedMediaType(AppError):
    code = "unsupported_media_type"


class Unavailable(AppError):
    code = "unavailable"


def status_for(exc: AppError | FaceChainError) -> int:
    """The HTTP status of a typed error."""
    default = 400 if isinstance(exc, AppError) else 422
    return STATUS_BY_CODE.get(exc.code, default)


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A JSON error body with this status."""
    body = ErrorOut(error=ErrorBody(code=code, message=message, details=details or {}))
    return web.json_response(body.model_dump(mode="json"), status=status, headers=headers)


def _json_safe(details: dict[str, Any]) -> dict[str, Any]:
    safe: dict[str, Any] = json.loads(json.dumps(details, default=str))
    return safe


def _route_label(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Map typed errors and HTTP exceptions to JSON error bodies; count every answer."""
    metrics = request.app[METRICS]
    try:
        response = await handler(request)
    except (AppError, FaceChainError) as exc:
        status = status_for(exc)
        details = _json_safe(exc.details) if isinstance(exc, AppError) else {}
        headers = {}
        if status == 401:
            headers["WWW-Authenticate"] = (
                'tma realm="facechain-miniapp"'
                if request.path.startswith("/miniapp/")
                else 'Bearer realm="facechain-admin"'
            )
        if "retry_after" in details:
            headers["Retry-After"] = str(details["retry_after"])
        if status >= 500:
            logger.error("%s %s failed: %s: %s", request.method, request.path, exc.code, exc)
        metrics.record_error(exc.code, "api")
        response = error_response(status, exc.code, str(exc), details, headers)
    except web.HTTPException as exc:
        if exc.empty_body or exc.status < 400:
            response = exc
        else:
            keep = ("Allow", "Retry-After", "WWW-Authenticate")
            headers = {k: exc.headers[k] for k in keep if k in exc.headers}
            response = error_response(
                exc.status,
                exc.reason.lower().replace(" ", "_"),
                exc.text or exc.reason,
                None,
                headers,
            )
    except Exception:
        # The one place an unexpected error stops: logged with its traceback, answered 500.
        logger.exception("%s %s crashed", request.method, request.path)
        metrics.record_error("internal", "api")
        response = error_response(500, "internal", "internal server error")
    metrics.http_requests.labels(
        method=request.method, route=_route_label(request), status=str(response.status)
    ).inc()
    return response


@dataclass(frozen=True)
class Upload:
    """One received file part."""

    filename: str
    content_type: str
    data: bytes


M = TypeVar("M", bound=BaseModel)
P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class Call:
    """A parsed request as its route declared it, plus the app's services."""

    request: web.Request
    route: Route
    query: BaseModel | None = None
    body: BaseModel | None = None
    files: dict[str, Upload] = field(default_factory=dict)
    actor: str = API_ACTOR

    @property
    def app(self) -> web.Application:
        return self.request.app

    @property
    def config(self) -> AppConfig:
        return self.app[CONFIG]

    @property
    def db(self) -> Database:
        return self.app[DB]

    @property
    def blobs(self) -> BlobStore:
        return self.app[BLOBS]

    @property
    def publisher(self) -> Publisher:
        return self.app[PUBLISHER]

    async def transact(
        self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run a use case in one transaction, then publish what it outboxed."""
        return await transact_async(self.db, self.publisher, fn, *args, **kwargs)

    def query_as(self, model: type[M]) -> M:
        """The parsed query, which the route declares as `model`."""
        if not isinstance(self.query, model):
            raise TypeError(f"route {self.route.path} does not declare query {model.__name__}")
        return self.query

    def body_as(self, model: type[M]) -> M:
        """The parsed JSON or multipart fields, which the route declares as `model`."""
        if not isinstance(self.body, model):
            raise TypeError(f"route {self.route.path} does not declare body {model.__name__}")
        return self.body

    def path_int(self, name: str) -> int:
        """An integer path parameter within the route's bounds (404 outside them)."""
        raw = self.request.match_info[name]
        try:
            value = int(raw)
        except ValueError:
            raise BadRequest(f"path parameter {name} must be an integer", value=raw) from None
        low, high = self.route.bounds(name)
        if not low <= value <= high:
            raise NotFound(f"no {name} {value}", value=value)
        return value


def _validation_details(exc: ValidationError) -> dict[str, Any]:
    return {
        "errors": [
            {"loc": ".".join(str(p) for p in err["loc"]), "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
    }


def validate(model: type[M], data: Any, what: str) -> M:
    """Validate data against a model; ValidationFailed (422) lists every problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(f"invalid {what}", **_validation_details(exc)) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: web.Request) -> Any:
    """The JSON body (bounded by client_max_size); 415 for another type, 400 if malformed."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send the body as application/json")
    raw = await request.read()
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None


async def _read_part(part: BodyPartReader, limit: int, name: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(256 * 1024):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"{name} is larger than {limit} bytes", limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


# Text fields of a multipart form are short (names, slugs, prompts).
MAX_FORM_FIELD_BYTES = 16 * 1024


async def read_multipart(
    request: web.Request, spec: Multipart
) -> tuple[dict[str, str], dict[str, Upload]]:
    """Stream a multipart form: files up to their own limits, text fields bounded."""
    if request.content_type != "multipart/form-data":
        raise UnsupportedMediaType("send the upload as multipart/form-data")
    limits = {f.name: f for f in spec.files}
    total = sum(f.max_bytes for f in spec.files) + 64 * MAX_FORM_FIELD_BYTES
    if request.content_length is not None and request.content_length > total:
        raise PayloadTooLarge(f"upload is larger than {total} bytes", limit=total)
    try:
        reader = await request.multipart()
        fields: dict[str, str] = {}
        files: dict[str, Upload] = {}
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise BadRequest("nested multipart bodies are not accepted")
            name = part.name or ""
            if name in limits:
                if name in files:
                    raise BadRequest(f"file {name} given twice")
                data = await _read_part(part, limits[name].max_bytes, name)
                files[name] = Upload(
                    part.filename or name,
                    part.headers.get("Content-Type", "application/octet-stream"),
                    data,
                )
            else:
                if len(fields) >= 64:
                    raise BadRequest("too many form fields")
                raw = await _read_part(part, MAX_FORM_FIELD_BYTES, name or "field")
                try:
                    fields[name] = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise BadRequest(f"form field {name} is not UTF-8 text") from None
    except (ValueError, AssertionError, LookupError, HttpProcessingError) as exc:
        # aiohttp's reader raises these on a malformed body (bad boundary, broken part headers).
        raise BadRequest(f"malformed multipart body: {exc}") from None
    missing = [f.name for f in spec.files if f.required and f.name not in files]
    if missing:
        raise ValidationFailed(
            "missing file parts", errors=[{"loc": m, "msg": "file required"} for m in missing]
        )
    return fields, files


def to_response(route: Route, result: BaseModel | web.StreamResponse | None) -> web.StreamResponse:
    """Serialize a handler's result with the route's status."""
    if isinstance(result, web.StreamResponse):
        return result
    if result is None:
        return web.Response(status=route.status if route.status != 200 else 204)
    return web.json_response(result.model_dump(mode="json"), status=route.status)


def make_handler(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler of a route: auth, parsing, the route's handler, serialization."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if route.auth:
            request.app[AUTH].check(request)
        if route.guard is not None:
            route.guard(request)
        call = Call(request, route)
        if route.query is not None:
            call.query = validate(route.query, dict(request.query), "query parameters")
        for name in route.path_params:
            call.path_int(name)
        if route.body is not None:
            call.body = validate(route.body, await read_json(request), "body")
        elif route.multipart is not None:
            fields, call.files = await read_multipart(request, route.multipart)
            call.body = validate(route.multipart.fields, fields, "form fields")
        return to_response(route, await route.handler(call))

    handle.__name__ = route.operation_id
    return handle
