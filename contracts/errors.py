"""The error tree shared by every edgeloop component.

Each error carries the exit code the CLI uses and the HTTP status the REST APIs answer with, so
that the mapping lives in one place. Messages say what went wrong and what to do about it.

    EdgeloopError
    ├── InputError                 bad user input: path, file format, column, value      (exit 2, HTTP 422)
    │   ├── SchemaError            a record does not match the model's input schema      (exit 2, HTTP 422)
    │   └── PayloadTooLarge        a request body over the server's limit                 (exit 2, HTTP 413)
    ├── Unauthorized               missing or unknown bearer token                       (exit 2, HTTP 401)
    │   └── Forbidden              a valid token without the role the route needs         (exit 2, HTTP 403)
    ├── NotFoundError              unknown model, alias, version, prediction id          (exit 3, HTTP 404)
    ├── IntegrityError             sha256 or signature mismatch, tampered bundle         (exit 4, HTTP 422)
    ├── ConversionError            the model cannot be converted or fails a gate         (exit 5, HTTP 422)
    │   ├── UnsupportedModelError  an estimator or transformer the converter cannot handle
    │   └── ParityCheckFailed      ONNX and sklearn disagree beyond the tolerance
    ├── ServiceUnavailableError    tracking server, broker or bundle server unreachable   (exit 6, HTTP 503)
    ├── ConflictError              the request contradicts stored state (e.g. a version reused) (exit 8, HTTP 409)
    ├── ModelRejected              an update was refused by the device (reason attached)  (exit 7, HTTP 409)
    ├── MissingExtra               a feature needs a package of an extra not installed     (exit 13, HTTP 501)
    ├── CheckFailed                `edgeloop agent doctor`: a check of the device failed     (exit 9, HTTP 500)
    │   └── UnsupportedOperator    the numpy runtime lacks an operator the bundle uses (`operator` names it)
    └── RolloutNotPromoted         `rollout status --wait` ended without a promotion        (HTTP 409)
        ├── RolloutRolledBack      the rollout was rolled back (by the cloud or by hand)   (exit 10)
        ├── RolloutFailed          the rollout failed (its rollback could not be made)     (exit 11)
        └── RolloutWaitTimeout     still canary or soaking when --timeout ran out          (exit 12)
"""

from __future__ import annotations

__all__ = [
    "CheckFailed",
    "ConflictError",
    "ConversionError",
    "EdgeloopError",
    "Forbidden",
    "InputError",
    "IntegrityError",
    "MissingExtra",
    "ModelRejected",
    "NotFoundError",
    "ParityCheckFailed",
    "PayloadTooLarge",
    "RolloutFailed",
    "RolloutNotPromoted",
    "RolloutRolledBack",
    "RolloutWaitTimeout",
    "SchemaError",
    "ServiceUnavailableError",
    "Unauthorized",
    "UnsupportedModelError",
    "UnsupportedOperator",
]


class EdgeloopError(Exception):
    """Base of every error edgeloop raises on purpose; its message is shown to the user as is."""

    exit_code = 1
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(EdgeloopError):
    exit_code = 2
    http_status = 422


class SchemaError(InputError):
    """A record does not match the input schema; `field` names the offending feature."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PayloadTooLarge(InputError):
    """A request body over the server's limit (the cloud's max_body_bytes)."""

    http_status = 413


class Unauthorized(EdgeloopError):
    """No bearer token, or one the server does not know (answered with `WWW-Authenticate: Bearer`)."""

    exit_code = 2
    http_status = 401


class Forbidden(Unauthorized):
    """A known token without the role the route needs (a viewer token on an operator route)."""

    http_status = 403


class NotFoundError(EdgeloopError):
    exit_code = 3
    http_status = 404


class IntegrityError(EdgeloopError):
    exit_code = 4
    http_status = 422


class ConversionError(EdgeloopError):
    exit_code = 5
    http_status = 422


class UnsupportedModelError(ConversionError):
    pass


class ParityCheckFailed(ConversionError):
    def __init__(self, message: str, max_abs_diff: float, tolerance: float, label_mismatches: int) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff
        self.tolerance = tolerance
        self.label_mismatches = label_mismatches


class ServiceUnavailableError(EdgeloopError):
    exit_code = 6
    http_status = 503


class ConflictError(EdgeloopError):
    exit_code = 8
    http_status = 409


class ModelRejected(EdgeloopError):
    exit_code = 7
    http_status = 409


class MissingExtra(EdgeloopError):
    """A feature needs an optional package that is not installed; the message names the extra to install
    (contracts/extras.py)."""

    exit_code = 13
    http_status = 501


class RolloutNotPromoted(EdgeloopError):
    """A waited-on rollout did not end promoted; each kind has its own exit code so CI can tell them apart."""

    exit_code = 10
    http_status = 409


class RolloutRolledBack(RolloutNotPromoted):
    exit_code = 10


class RolloutFailed(RolloutNotPromoted):
    exit_code = 11


class RolloutWaitTimeout(RolloutNotPromoted):
    exit_code = 12


class UnsupportedOperator(ModelRejected):
    """The numpy runtime does not implement an operator (or an operator's form) that model.onnx uses."""

    def __init__(self, message: str, operator: str | None = None) -> None:
        super().__init__(message)
        self.operator = operator


class CheckFailed(EdgeloopError):
    """A preflight check failed (`edgeloop agent doctor`); the lines printed before it say what to do."""

    exit_code = 9
