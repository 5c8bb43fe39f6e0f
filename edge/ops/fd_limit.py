"""The process's open-file limit, raised once at start-up (`python -m edge run`, not an embedding program).

Every connection costs one file descriptor, and a TLS handshake in progress costs one too. Many systems
start a service with a soft RLIMIT_NOFILE of 1024 under a hard limit a thousand times larger: at 1024
the accept loop gets EMFILE long before GRPC_MAX_CONNECTIONS. So the soft limit is raised to the hard
one, and both are logged once (`open_files_limit`); a hard limit too low for GRPC_MAX_CONNECTIONS plus
FD_RESERVE is a warning (`open_files_limit_low`), not a refusal: the edge still runs, and the accept
loop backs off on EMFILE (edge.grpc.listeners).
"""

from __future__ import annotations

import resource
from typing import Final

import structlog

log = structlog.get_logger(__name__)

#: Descriptors the edge needs besides its peer connections: Kafka sockets, the ops port, logs, the
#: Trio wakeup pipe, certificates being read.
FD_RESERVE: Final = 256


def raise_open_files_limit(max_connections: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; log before and after; return (before, after)."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    after = before
    if hard == resource.RLIM_INFINITY or before < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(before, max_connections + FD_RESERVE)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            after = target
        except (ValueError, OSError) as error:
            log.warning("open_files_limit_not_raised", soft=before, hard=hard, error=str(error))
    log.info("open_files_limit", before=before, after=after, hard=hard)
    if after < max_connections + FD_RESERVE:
        log.warning(
            "open_files_limit_low",
            limit=after,
            needed=max_connections + FD_RESERVE,
            detail="GRPC_MAX_CONNECTIONS cannot all be open at once; raise the hard limit (ulimit -Hn, LimitNOFILE=)",
        )
    return before, after
