"""Reading coturn's turnutils_uclient: its closing summary, and the zero-loss check every
interop test makes. Shared by tests/interop, tests/tls and tests/image."""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOTALS = re.compile(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", re.MULTILINE)
_LOST = re.compile(r"Total lost packets (\d+)")
_DROPPED = re.compile(r"total send dropped (\d+)", re.IGNORECASE)


@dataclass
class Summary:
    sent: int
    received: int
    lost: int
    send_dropped: int
    output: str


def parse_summary(output: str, context: str) -> Summary:
    """The last summary uclient printed; fails the test, showing `context`, when there is none."""
    totals = _TOTALS.findall(output)
    lost = _LOST.search(output)
    dropped = _DROPPED.search(output)
    assert totals and lost and dropped, f"no summary in uclient's output: {context}"
    sent, received = map(int, totals[-1])
    return Summary(sent, received, int(lost.group(1)), int(dropped.group(1)), context)


def assert_no_loss(summary: Summary, at_least: int) -> None:
    assert summary.lost == 0, summary.output
    assert summary.send_dropped == 0, summary.output
    assert summary.sent >= at_least, summary.output
    assert summary.received == summary.sent, summary.output
