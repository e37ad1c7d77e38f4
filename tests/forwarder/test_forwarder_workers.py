"""`stunnerd -u 2 --forwarder compiled`: each worker runs its own forwarder thread, both
workers' allocations are relayed by their threads, and the supervisor's /metrics counts every
packet once: `stunner_forwarder_*`, listener and cluster figures are the sum over the workers,
not doubled (the model: tests/offload/test_offload_workers.py).

Proof that the threads relayed all of it: the cluster figures count what Python and the
threads relayed, `stunner_forwarder_packets` only the threads'; both equal what was sent, and
what the threads handed to Python is a few STUN messages per client, not the media."""

from __future__ import annotations

import os
from pathlib import Path

from helpers.fast_path_workers import (
    CLIENTS,
    check_counted_once,
    delta,
    figure,
    relay_over_both_workers,
    two_worker_daemon,
)
from helpers.hostile_kit import open_peer

from forwarder.kit import require_forwarder
from stunner_dp.net.forwarder import FORWARDER_ENV

PREFIX = "stunner_forwarder_"


async def test_both_workers_forward_in_their_threads_and_the_supervisor_counts_once(
    tmp_path: Path,
) -> None:
    require_forwarder()
    peer = await open_peer("127.0.0.1")
    env = {k: v for k, v in os.environ.items() if k != FORWARDER_ENV}  # the flag alone decides
    try:
        async with two_worker_daemon(
            tmp_path,
            peer.address[1],
            name="forwarder-workers",
            args=("--forwarder", "compiled"),
            env=env,
        ) as daemon:
            relayed = await relay_over_both_workers(
                daemon,
                peer,
                PREFIX,
                loaded="both workers run their forwarder thread",
                counted="the threads' counts reached the supervisor",
            )
        check_counted_once(relayed, PREFIX)
        after = relayed.after
        assert figure(after, f"{PREFIX}installs_total") == CLIENTS
        assert figure(after, f"{PREFIX}install_failures_total") == 0
        assert figure(after, f"{PREFIX}handoff_dropped_packets_total") == 0
        # from the last ChannelBind on, the media only: not one packet of it handed to Python
        assert delta(relayed, f"{PREFIX}handed_off_packets_total") == 0
    finally:
        if peer.transport is not None:
            peer.transport.close()
