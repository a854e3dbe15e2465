"""Download a bundle's model.onnx over HTTP(S) with the standard library: timeout, size cap, retries with
exponential backoff, resume with a Range request when the server supports it, and a sha256 check.

    download_model(url, dest, size=manifest.onnx.size, sha256=manifest.onnx.sha256, timeout_s=30, retries=3)

The size and digest come from the signed manifest, so a file that differs by one byte is refused.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from contracts.errors import IntegrityError
from contracts.logs import log_event
from contracts.manifest import sha256_file
from edge_agent.errors import DownloadFailed

__all__ = ["download_model"]

logger = logging.getLogger("edgeloop.agent.download")
_CHUNK = 1 << 16
_RETRYABLE_4XX = {408, 425, 429}


def _attempt(url: str, dest: Path, size: int, timeout_s: float) -> None:
    """One GET (resumed from what `dest` already holds); raises DownloadFailed or OSError."""
    have = dest.stat().st_size if dest.exists() else 0
    headers = {"User-Agent": "edgeloop-agent", "Accept-Encoding": "identity"}
    if 0 < have < size:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have == size:
            return
        permanent = 400 <= exc.code < 500 and exc.code not in _RETRYABLE_4XX
        raise DownloadFailed(f"bundle server answered HTTP {exc.code} for {url}", permanent=permanent) from None
    with response:
        resumed = response.status == 206 and response.headers.get("Content-Range", "").startswith(f"bytes {have}-")
        offset = have if resumed else 0
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and offset + int(length) > size:
            raise DownloadFailed(
                f"{url} is {offset + int(length)} bytes but the signed manifest says {size}: refused", permanent=True
            )
        with open(dest, "ab" if resumed else "wb") as handle:
            written = offset
            while block := response.read(_CHUNK):
                written += len(block)
                if written > size:
                    raise DownloadFailed(f"{url} sends more than the {size} bytes of the manifest: refused", True)
                handle.write(block)
    if written < size:
        raise OSError(f"connection closed after {written} of {size} bytes")


def download_model(
    url: str,
    dest: Path,
    size: int,
    sha256: str,
    timeout_s: float = 30.0,
    retries: int = 3,
    backoff_s: float = 1.0,
) -> None:
    """Fetch `url` into `dest` and check it against the manifest's size and sha256.

    Raises DownloadFailed (network, HTTP status; `permanent` says whether a later retry can help) or
    IntegrityError (the bytes are not the signed model).
    """
    if urlsplit(url).scheme not in ("http", "https"):
        raise DownloadFailed(f"model_url {url!r} must be http:// or https://", permanent=True)
    dest.unlink(missing_ok=True)
    delay = backoff_s
    for attempt in range(retries + 1):
        try:
            _attempt(url, dest, size, timeout_s)
            break
        except DownloadFailed as exc:
            if exc.permanent or attempt == retries:
                raise
            error = exc.message
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets, short reads, bad status lines
            if attempt == retries:
                reason = getattr(exc, "reason", exc)
                raise DownloadFailed(f"cannot download {url} after {retries + 1} attempts: {reason}") from None
            error = str(getattr(exc, "reason", exc))
        log_event(logger, "download retry", level=logging.WARNING, url=url, attempt=attempt + 1, error=error)
        time.sleep(delay)
        delay *= 2
    if sha256_file(dest) != sha256:
        dest.unlink(missing_ok=True)
        raise IntegrityError(f"sha256 of the model downloaded from {url} does not match the signed manifest: refused")
