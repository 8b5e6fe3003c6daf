"""The admin's domain errors; `pages.admin_page` is the one place that turns them into HTTP.

Validation problems a person can fix are not errors here: handlers flash them and show
the form again, as Trunk8 does.
"""

from __future__ import annotations


class AdminError(Exception):
    """Base of the admin's errors."""


class CsrfError(AdminError):
    """A state-changing request without the session's CSRF token (answered 403)."""

    def __init__(self) -> None:
        super().__init__("The form has expired or did not come from this site. Please try again.")


class RequestTooLarge(AdminError):
    """The request body is over the size cap (answered 413, T8-056)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"The upload is larger than the limit of {limit // (1024 * 1024)} MB.")
        self.limit = limit


class FormError(AdminError):
    """A form that cannot be read as sent; `field` names the part at fault, if any."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
