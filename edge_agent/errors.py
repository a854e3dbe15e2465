"""The edge agent's own errors, added under the shared tree so one handler maps every error to HTTP.
The two the cloud's API raises too live in contracts.errors (one class, one problem `type` for both APIs).

EdgeloopError (contracts.errors)
├── InputError
│   ├── MalformedBody        the body is not JSON, or uses NaN/Infinity tokens     (HTTP 400)
│   ├── PayloadTooLarge (contracts) the body is over max_body_bytes                (HTTP 413)
│   └── BatchTooLarge        more records than max_batch                           (HTTP 413)
├── Unauthorized (contracts) missing or wrong bearer token                         (HTTP 401)
├── ServiceUnavailableError
│   ├── ModelNotReady        no model is loaded yet                                (HTTP 503)
│   ├── DownloadFailed       the bundle URL cannot be fetched                      (HTTP 503)
│   └── PredictQueueFull     too many MQTT predict requests waiting                (HTTP 503)
└── ModelRejected (contracts) an update refused by this device                     (HTTP 409)
"""

from __future__ import annotations

from contracts.errors import InputError, PayloadTooLarge, ServiceUnavailableError, Unauthorized

# PayloadTooLarge and Unauthorized are contracts' classes, named here too for the agent's callers.
__all__ = [
    "BatchTooLarge",
    "DownloadFailed",
    "MalformedBody",
    "ModelNotReady",
    "PayloadTooLarge",
    "PredictQueueFull",
    "Unauthorized",
]


class MalformedBody(InputError):
    http_status = 400


class BatchTooLarge(InputError):
    http_status = 413


class ModelNotReady(ServiceUnavailableError):
    pass


class PredictQueueFull(ServiceUnavailableError):
    pass


class DownloadFailed(ServiceUnavailableError):
    """`permanent` is True when retrying the same URL cannot help (HTTP 4xx, wrong size or digest)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
