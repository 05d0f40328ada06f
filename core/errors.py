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


class Conflict(AppError):
    """The request clashes with what exists (a taken name, an item in use)."""

    code = "conflict"


class InUse(Conflict):
    """A catalog item still has queued or running jobs."""


class SelfieRequired(AppError):
    """The user has no usable selfie yet."""

    code = "selfie_required"


class StyleUnavailable(AppError):
    """The style was removed, disabled or is not visible to this user."""

    code = "style_unavailable"


class TemplateUnavailable(AppError):
    """The template was removed, disabled or is not visible to this user."""

    code = "template_unavailable"


class ResultUnavailable(AppError):
    """The portrait behind a result button is gone, not finished, or not this user's."""

    code = "result_unavailable"


class StyleLoRAMissing(AppError):
    """A style's LoRA file is neither cached nor obtainable now."""

    code = "style_lora_missing"


class InvalidStyleUpload(ValidationFailed):
    """An uploaded style (LoRA, thumbnail, names, prompt) was refused; the message says why."""

    code = "invalid_lora"
