"""Typed errors that the runners map to a retry, a refund, or a message for the user.

Every error says whether trying again may help (`retryable`), how long to wait when the other side
said so (`retry_after`), and which user text explains it (`reason`, a key of generation/texts.toml).
Messages carry no secrets: never the token, never a URL with a token in it.
"""

from __future__ import annotations


class StepError(Exception):
    retryable = False
    reason = "failed_generic"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderRateLimited(StepError):
    retryable = True
    reason = "failed_busy"


class ProviderUnavailable(StepError):
    """5xx, timeouts, connection errors: the provider may answer on a later try."""

    retryable = True
    reason = "failed_busy"


class ProviderRejected(StepError):
    """The provider refused the input (e.g. a prompt its safety filter rejects): it fails again."""

    reason = "failed_rejected"


class ProviderFailed(StepError):
    """The prediction itself ended in failure or was cancelled at the provider."""

    reason = "failed_generic"


class ProviderQuotaExceeded(StepError):
    """Our account at the provider is out of credit or quota: an operator must act."""

    reason = "failed_busy"


class ProviderMisconfigured(StepError):
    """No API token, or a token the provider refuses: an operator must act."""

    reason = "failed_generic"
