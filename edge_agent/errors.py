"""The edge agent's own errors, added under the shared tree so one handler maps every error to HTTP.

EdgeloopError (contracts.errors)
├── InputError
│   ├── MalformedBody        the body is not JSON, or uses NaN/Infinity tokens     (HTTP 400)
│   ├── PayloadTooLarge      the body is over max_body_bytes                       (HTTP 413)
│   └── BatchTooLarge        more records than max_batch                           (HTTP 413)
├── Unauthorized             missing or wrong bearer token                         (HTTP 401)
├── ServiceUnavailableError
│   ├── ModelNotReady        no model is loaded yet                                (HTTP 503)
│   └── DownloadFailed       the bundle URL cannot be fetched                      (HTTP 503)
└── ModelRejected (contracts) an update refused by this device                     (HTTP 409)
"""

from __future__ import annotations

from contracts.errors import EdgeloopError, InputError, ServiceUnavailableError

__all__ = ["BatchTooLarge", "DownloadFailed", "MalformedBody", "ModelNotReady", "PayloadTooLarge", "Unauthorized"]


class MalformedBody(InputError):
    http_status = 400


class PayloadTooLarge(InputError):
    http_status = 413


class BatchTooLarge(InputError):
    http_status = 413


class Unauthorized(EdgeloopError):
    exit_code = 2
    http_status = 401


class ModelNotReady(ServiceUnavailableError):
    pass


class DownloadFailed(ServiceUnavailableError):
    """`permanent` is True when retrying the same URL cannot help (HTTP 4xx, wrong size or digest)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
