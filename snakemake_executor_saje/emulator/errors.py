"""Batch service errors as the real service sends them: a status code and an OData error body.

Body shape (Batch REST reference, "Batch status and error codes"):
    {"odata.metadata": ".../$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element",
     "code": "PoolNotFound",
     "message": {"lang": "en-US", "value": "The specified pool does not exist.\\nRequestId:...\\nTime:..."},
     "values": [{"key": "...", "value": "..."}]}
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .timeutil import iso_now


@dataclass
class BatchError(Exception):
    status: int
    code: str
    message: str
    values: list[tuple[str, str]] = field(default_factory=list)
    schema: bool = False  # refused by the schema check of the request body (see schema/request.py)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def body(self, account_url: str, request_id: str, now: str | None = None) -> dict:
        """The OData error body; `now` is the service's time for the message's Time line."""
        payload: dict = {
            "odata.metadata": f"{account_url}/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element",
            "code": self.code,
            "message": {"lang": "en-US", "value": f"{self.message}\nRequestId:{request_id}\nTime:{now or iso_now()}"},
        }
        if self.values:
            payload["values"] = [{"key": k, "value": v} for k, v in self.values]
        return payload


def not_found(kind: str) -> BatchError:
    """PoolNotFound / JobNotFound / TaskNotFound / NodeNotFound / FileNotFound with the real wording."""
    return BatchError(404, f"{kind}NotFound", f"The specified {kind.lower()} does not exist.")


def exists(kind: str) -> BatchError:
    return BatchError(409, f"{kind}Exists", f"The specified {kind.lower()} already exists.")


def invalid_property(name: str, value: object, reason: str) -> BatchError:
    return BatchError(
        400,
        "InvalidPropertyValue",
        "The value provided for one of the properties in the request body is invalid.",
        [("PropertyName", name), ("PropertyValue", str(value)), ("Reason", reason)],
    )


def missing_property(name: str) -> BatchError:
    return BatchError(
        400,
        "MissingRequiredProperty",
        "A required property was not specified in the request body.",
        [("PropertyName", name)],
    )


def invalid_header(name: str, value: object, reason: str) -> BatchError:
    return BatchError(
        400,
        "InvalidHeaderValue",
        "The value for one of the HTTP headers is not in the correct format.",
        [("HeaderName", name), ("HeaderValue", str(value)), ("Reason", reason)],
    )


def invalid_query(name: str, value: object, reason: str) -> BatchError:
    return BatchError(
        400,
        "InvalidQueryParameterValue",
        "Value for one of the query parameters specified in the request URI is invalid.",
        [("QueryParameterName", name), ("QueryParameterValue", str(value)), ("Reason", reason)],
    )


def conflict(code: str, message: str) -> BatchError:
    return BatchError(409, code, message)
