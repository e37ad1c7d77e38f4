"""One log line per state-machine event (scope "turn"): allocations created, refreshed and
deleted with their traffic, permissions denied, authentication failures, rejected requests."""

from __future__ import annotations

from stunner_dp.observe.logs import get_logger
from stunner_dp.turn import events as ev

log = get_logger("turn")


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
            op, ob, ip_, ib = a.totals()
            log.info(
                "allocation deleted",
                listener=a.listener,
                transport=a.transport,
                client=f"{a.client[0]}:{a.client[1]}",
                user=a.username,
                relay=f"{a.relay_addr[0]}:{a.relay_addr[1]}",
                reason=reason,
                packets_to_peers=op,
                bytes_to_peers=ob,
                packets_to_client=ip_,
                bytes_to_client=ib,
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
            log.info(
                "authentication failed",
                listener=listener,
                client=f"{client[0]}:{client[1]}",
                user=user,
                reason=reason,
            )
        case ev.RequestRejected(listener=listener, client=client, method=m, code=code, reason=r):
            log.debug(
                "request rejected",
                listener=listener,
                client=f"{client[0]}:{client[1]}",
                method=m,
                code=code,
                reason=r,
            )
