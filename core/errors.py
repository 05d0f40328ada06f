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


class CreditsNeeded(QuotaExceeded):
    """Today's free quota is used up and the user lacks the credits (payments are on)."""

    code = "credits_needed"


class UploadLimitReached(QuotaExceeded):
    """The user stored LIMITS_UPLOAD_BYTES_PER_DAY bytes of photos today (details: limit_mb)."""

    code = "upload_limit"


class TemplatePhotoLimitReached(QuotaExceeded):
    """Every one of the user's LIMITS_MAX_TEMPLATE_PHOTOS template photos is used by an active
    job, so none can make room for another (details: max)."""

    code = "template_photo_limit"


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


class UnsafeImage(ValidationFailed):
    """An upload the safety checker flagged; it was refused and nothing of it was kept."""

    code = "unsafe_image"


class EngineUnavailable(AppError):
    """The gpu worker could not build the engine (weights missing, no device)."""

    code = "engine_unavailable"


class BlobMissing(AppError):
    code = "blob_missing"


class Conflict(AppError):
    """The request clashes with what exists (a taken name, an item in use)."""

    code = "conflict"


class InsufficientCredits(Conflict):
    """Taking credits a user does not have (a balance never goes below zero)."""

    code = "insufficient_credits"


class AmbiguousUser(Conflict):
    """An `@username` that more than one user row holds (`ids`: the candidates' Telegram ids)."""

    code = "ambiguous_user"


class ReconcileRunning(Conflict):
    """Another reconciliation with Telegram's Stars history holds the lock; try again later."""

    code = "reconcile_running"


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


class ResultExpired(ResultUnavailable):
    """A finished job's images were deleted at the end of their retention period."""

    code = "result_expired"


class StyleLoRAMissing(AppError):
    """A style's LoRA file is neither cached nor obtainable now."""

    code = "style_lora_missing"


class InvalidStyleUpload(ValidationFailed):
    """An uploaded style (LoRA, thumbnail, names, prompt) was refused; the message says why."""

    code = "invalid_lora"


class PaymentRefused(AppError):
    """A purchase (or refund) that cannot go through; `reason` names why (a translation key
    under `pay.refused.`)."""

    code = "payment_refused"


# Job error codes caused by what the user sent (no usable face, a file that is not an image,
# a bad training set): such a job keeps what it was charged. Every other failure — a worker
# crash, an engine or weights error, a time limit, an unknown code — is the operator's, and
# gives the charge (free-quota slot or credits) back (`domain.billing`).
USER_INPUT_CODES = frozenset(
    {
        "not_an_image",
        "image_too_large",
        "no_face",
        "multiple_faces",
        "face_too_small",
        "poor_quality",
        "invalid",
        "invalid_lora",
        "selfie_required",
        "training_dataset_invalid",
        "training_too_few_images",
        "training_too_many_images",
        "training_not_an_image",
        "training_duplicate_images",
        "training_no_variety",
        "training_trigger_word",
    }
)


def caused_by_user(code: str | None) -> bool:
    """Whether a failed job's error code blames the user's input (see USER_INPUT_CODES)."""
    return code in USER_INPUT_CODES
