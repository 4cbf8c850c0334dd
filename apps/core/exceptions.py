"""Errors a person can act on. The API maps them to 4xx JSON, the UI to inline messages."""

from typing import Any


class ApplicationError(Exception):
    """Base for every error the user can fix; `field` says where the problem is."""

    status_code = 400

    def __init__(self, message: str, *, field: str | None = None, extra: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"detail": self.message}
        if self.field:
            body["field"] = self.field
        if self.extra is not None:
            body["errors"] = self.extra
        return body


class ValidationFailed(ApplicationError):
    status_code = 422


class Conflict(ApplicationError):
    status_code = 409


class NotFound(ApplicationError):
    """Missing and forbidden look the same to a caller who may not see the object."""

    status_code = 404

    def __init__(self, message: str = "Not found.", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)


class PermissionDenied(ApplicationError):
    status_code = 403

    def __init__(
        self, message: str = "You do not have permission to do this.", **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)


class AuthenticationFailed(ApplicationError):
    status_code = 401
