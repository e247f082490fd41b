"""Raise this process's open-file limit (``RLIMIT_NOFILE``) so its connections fit, where the system allows.

Many systems start processes with a soft limit of 1,024 descriptors and a hard limit far above it; a
gateway worker needs one per client connection and one per engine request in flight. The soft limit is
raised to the hard limit (children, the server's workers, inherit it). Where even that is below what the
settings need, one warning says so and which setting to lower.
"""

from __future__ import annotations

import logging
import resource

__all__ = ["raise_fd_limit"]

log = logging.getLogger(__name__)


def raise_fd_limit(needed: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` towards the hard one; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, needed) if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # e.g. a container that forbids it
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "the open-file limit is %d, below the %d that TENANTGATE_MAX_CONNECTIONS needs: beyond it new"
            " connections fail; raise the hard limit (ulimit -Hn) or lower TENANTGATE_MAX_CONNECTIONS",
            soft, needed, extra={"open_file_limit": soft, "needed": needed},
        )  # fmt: skip
    return int(soft)
