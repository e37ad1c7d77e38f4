"""One log line per state-machine event (scope "turn"): allocations created, refreshed and
deleted with their traffic, permissions denied, authentication failures, rejected requests.

What a stranger can raise at packet rate is sampled, not written per packet: failed logins
(their answers may be rate limited away, their log lines are too) and requests that hit a bug.
A sampled line says how many like it were left out since the previous one (`suppressed`).
Client-controlled text (usernames) is escaped by the logging set-up (`logs.escape_fields`)."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable

from stunner_dp.observe.logs import get_logger
from stunner_dp.turn import events as ev

log = get_logger("turn")


class LogSampler:
    """At most `burst` lines at once, then `rate` a second; counts the ones it refuses."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens = float(burst)
        self._stamp = clock()
        self.suppressed = 0  # refused since the last line let through

    def take(self) -> int | None:
        """None: leave this line out. Otherwise write it, with this count of left-out ones."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1.0:
            self.suppressed += 1
            return None
        self._tokens -= 1.0
        left_out, self.suppressed = self.suppressed, 0
        return left_out


AUTH_FAILED_LINES = LogSampler(rate=1.0, burst=10)
REQUEST_FAILED_LINES = LogSampler(rate=1.0, burst=1)
TRACEBACK_EVERY = 60.0  # seconds: one traceback per minute at most, the rest one line each
_last_traceback = [-TRACEBACK_EVERY]


def _log_request_failed(event: ev.RequestFailed) -> None:
    left_out = REQUEST_FAILED_LINES.take()
    if left_out is None:
        return
    now = time.monotonic()
    with_traceback = now - _last_traceback[0] >= TRACEBACK_EVERY
    if with_traceback:
        _last_traceback[0] = now
    error = event.error
    log.error(
        "request handling failed: message dropped",
        listener=event.listener,
        client=f"{event.client[0]}:{event.client[1]}",
        error=f"{type(error).__name__}: {error}",
        suppressed=left_out,
        traceback="".join(traceback.format_exception(error)) if with_traceback else "",
    )


def log_event(event: ev.Event) -> None:
    match event:
        case ev.AllocationCreated(allocation=a):
            log.info(
                "allocation created",
                listener=a.listener,
                transport=a.transport,
                client=f"{a.client[0]}:{a.client[1]}",
                user=a.username,
                relay=f"{a.relay_addr[0]}:{a.relay_addr[1]}",
                lifetime=int(a.expires - a.created),
            )
        case ev.AllocationRefreshed(allocation=a, lifetime=lifetime):
            log.info(
                "allocation refreshed",
                listener=a.listener,
                client=f"{a.client[0]}:{a.client[1]}",
                user=a.username,
                lifetime=lifetime,
            )
        case ev.AllocationDeleted(allocation=a, reason=reason):
            # The billing record of an allocation: one line per allocation, whatever the
            # number of users (no label cardinality); payload bytes, the kernel's included.
            op, ob, ip_, ib = a.totals()
            log.info(
                "allocation deleted",
                listener=a.listener,
                transport=a.transport,
                client=f"{a.client[0]}:{a.client[1]}",
                user=a.username,
                quota_user=a.quota_user,  # an ephemeral username without its timestamp
                relay=f"{a.relay_addr[0]}:{a.relay_addr[1]}",
                reason=reason,
                packets_to_peers=op,
                bytes_to_peers=ob,
                packets_to_client=ip_,
                bytes_to_client=ib,
                # logged as the event is handled, right after the deletion
                duration=round(max(0.0, time.time() - a.created), 3),
            )
        case ev.PermissionDenied(listener=listener, client=client, peer=peer, clusters=clusters):
            log.info(
                "permission denied: no route to endpoint",
                peer=f"{peer[0]}:{peer[1]}",
                listener=listener,
                client=f"{client[0]}:{client[1]}",
                clusters_tried=list(clusters),
            )
        case ev.AuthFailed(listener=listener, client=client, username=user, reason=reason):
            left_out = AUTH_FAILED_LINES.take()
            if left_out is not None:
                more = {"suppressed": left_out} if left_out else {}
                log.info(
                    "authentication failed",
                    listener=listener,
                    client=f"{client[0]}:{client[1]}",
                    user=user,
                    reason=reason,
                    **more,
                )
        case ev.RequestFailed():
            _log_request_failed(event)
        case ev.RequestRejected(listener=listener, client=client, method=m, code=code, reason=r):
            log.debug(
                "request rejected",
                listener=listener,
                client=f"{client[0]}:{client[1]}",
                method=m,
                code=code,
                reason=r,
            )
