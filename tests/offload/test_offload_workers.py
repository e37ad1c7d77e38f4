"""`stunnerd -u 2` with `admin.offload_engine: TC` (issue 10): each worker loads its own
program on lo, both workers' allocations are relayed by the kernel (a packet one worker's
program holds no entry for goes on down the tcx chain to the other's), and the supervisor's
/metrics counts every packet once: `stunner_offload_*`, listener and cluster figures are the
sum over the workers, not doubled.

Proof that the kernel relayed all of it: the cluster figures count what Python and the kernel
relayed, `stunner_offload_packets` only the kernel's; both equal what was sent."""

from __future__ import annotations

from pathlib import Path

from helpers.fast_path_workers import check_counted_once, relay_over_both_workers, two_worker_daemon
from helpers.gates import require_offload
from helpers.hostile_kit import open_peer

OFFLOAD = {"offload_engine": "TC", "offload_interfaces": ["lo"]}


async def test_both_workers_offload_and_the_supervisor_counts_once(tmp_path: Path) -> None:
    require_offload()
    peer = await open_peer("127.0.0.1")
    try:
        async with two_worker_daemon(
            tmp_path, peer.address[1], name="offload-workers", admin=OFFLOAD
        ) as daemon:
            relayed = await relay_over_both_workers(
                daemon,
                peer,
                "stunner_offload_",
                loaded="both workers loaded their program",
                counted="the kernel's counts reached the supervisor",
            )
        check_counted_once(relayed, "stunner_offload_")
    finally:
        if peer.transport is not None:
            peer.transport.close()
