"""The service's error hierarchy: typed errors with a stable `code` raised in leaf code and
caught at boundaries (handlers, tasks, the admin API). Codes double as translation keys and
as `Job.error_code` values; facechain's own errors carry codes from the same namespace."""

from __future__ import annotations


class AppError(Exception):
    """Base class: `code` is stable and user-facing messages are looked up by it."""

    code = "internal"

    def __init__(self, message: str = "", **details: object) -> None:
        super().__init__(message or self.code)
        self.details = details


class ConfigError(AppError):
    code = "config"


class NotFound(AppError):
    code = "not_found"


class IllegalTransition(AppError):
    """A job state change the state machine does not allow."""

    code = "illegal_transition"


class QuotaExceeded(AppError):
    code = "quota_exceeded"


class RateLimited(AppError):
    code = "rate_limited"


class ActiveJobExists(AppError):
    code = "active_job_exists"


class Forbidden(AppError):
    code = "forbidden"


class UserBanned(AppError):
    code = "banned"


class ValidationFailed(AppError):
    code = "invalid"


class EngineUnavailable(AppError):
    """The gpu worker could not build the engine (weights missing, no device)."""

    code = "engine_unavailable"


class BlobMissing(AppError):
    code = "blob_missing"
