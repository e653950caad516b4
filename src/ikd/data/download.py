"""Fetching a file from a list of mirrors, verified before it becomes visible under its final name."""

from __future__ import annotations

import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from ikd.errors import DataError

log = logging.getLogger(__name__)

TIMEOUT_S = 15.0
# Refuses a misbehaving mirror before it fills the disk; the largest file fetched is ~26 MB.
MAX_BYTES = 256 << 20
_CHUNK = 1 << 20


class DownloadError(Exception):
    """Every mirror failed; str() lists each URL with its reason on one line."""


def one_line(text: object, limit: int = 300) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def fetch(urls: Sequence[str], dest: Path, verify: Callable[[Path], None], *, timeout: float = TIMEOUT_S) -> str:
    """Download the first URL that works and passes `verify` to `dest`; return that URL.

    The body goes to a temporary file next to `dest` and is renamed over it only after `verify`
    accepted it, so an interrupted or corrupt download never looks like a finished file.
    """
    reasons: list[str] = []
    for url in urls:
        tmp: Path | None = None
        try:
            if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                raise ValueError("only http:// and https:// URLs are fetched")
            log.info("downloading %s -> %s", url, dest)
            with urllib.request.urlopen(url, timeout=timeout) as response:
                dest.parent.mkdir(parents=True, exist_ok=True)  # only once a mirror answers
                fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
                tmp = Path(name)
                with os.fdopen(fd, "wb") as out:
                    total = 0
                    while chunk := response.read(_CHUNK):
                        total += len(chunk)
                        if total > MAX_BYTES:
                            raise ValueError(f"response larger than {MAX_BYTES} bytes")
                        out.write(chunk)
            verify(tmp)
            os.replace(tmp, dest)
            tmp = None
            return url
        except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError, DataError) as e:
            reasons.append(f"{url}: {one_line(e, 300)}")
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
    raise DownloadError("; ".join(reasons) if reasons else "no mirrors configured")
