"""Tell a running service to load a new snapshot: ``POST {url}`` with ``{"version": ...}``."""

from __future__ import annotations

import logging

import httpx

log = logging.getLogger(__name__)


class ReloadNotifyError(Exception):
    """The service did not accept the reload request (the snapshot stays published)."""


def notify_reload(url: str, version: str, token: str, timeout: float = 30.0) -> None:
    """POST the version with ``Authorization: Bearer <token>``; raises ReloadNotifyError."""
    try:
        response = httpx.post(
            url,
            json={"version": version},
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise ReloadNotifyError(f"POST {url} failed: {exc!r}; is the service running?") from exc
    if not response.is_success:
        raise ReloadNotifyError(
            f"POST {url} answered {response.status_code}: {response.text[:500]}"
        )
    log.info("service at %s reloaded snapshot %s", url, version)
