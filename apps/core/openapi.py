"""The error answers of the REST API, documented once for every operation.

Every error is JSON `{"detail": "...", "field": "...", "errors": [...]}` (studio/api.py).
Which statuses an operation can give follows from what it takes, not from its code:
any request can be refused for its headers or query string (400, 422: a malformed
X-Studio-Context header, a NUL character), its credentials (401) or its permissions and
CSRF token (403); an operation that names something (path, query or body) can answer
404; one that writes can meet a conflicting state (409).
"""

from typing import Any

ERROR_SCHEMA = "ErrorOut"
UNSAFE = frozenset({"post", "put", "patch", "delete"})
WHY = {
    "400": "Malformed request: a body that is not JSON, a malformed header",
    "401": "No credentials, or a token that is unknown, expired or revoked",
    "403": "The role does not allow it, or a session request lacks its CSRF token",
    "404": "Something the request names does not exist or is not visible to the caller",
    "409": "The current state does not allow it (a duplicate, a finished job, a moved label…)",
    "422": "A value is invalid; `field` (and `errors`) say which and why",
    "429": "Too many requests; retry after the number of seconds in Retry-After",
}


def _statuses(method: str, operation: dict[str, Any]) -> list[str]:
    statuses = ["400", "401", "403", "422"]
    if operation.get("parameters") or operation.get("requestBody"):
        statuses.append("404")
    if method in UNSAFE:
        statuses.append("409")
    return statuses + list(operation.get("x-studio-errors", []))


def document_errors(document: dict[str, Any]) -> dict[str, Any]:
    """Add the error answers to every operation of `document` (an OpenAPI dict), keeping
    any the operation declares itself."""
    document.setdefault("components", {}).setdefault("schemas", {})[ERROR_SCHEMA] = {
        "title": ERROR_SCHEMA,
        "type": "object",
        "properties": {
            "detail": {"type": "string", "description": "What went wrong, for a person"},
            "field": {"type": "string", "description": "Where: a parameter or body path"},
            "errors": {"description": "Every problem found, when there are several"},
        },
        "required": ["detail"],
    }
    error = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}}
    for item in document.get("paths", {}).values():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for status in _statuses(method, operation):
                responses.setdefault(status, {"description": WHY[status], "content": error})
            operation.pop("x-studio-errors", None)
    return document
