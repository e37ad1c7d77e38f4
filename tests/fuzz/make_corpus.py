"""Write the fuzz target's seed corpus: real messages of every method (unsigned, signed right,
signed wrong, bad nonce), Send indications and ChannelData, and requests of TURN REST API users
with hostile usernames for the ephemeral server, each behind the two selector bytes
of tests/fuzz/fuzz_turn.py, for both targets and every source/listener/entry combination; and
the IPv6 world's seeds (tests/fuzz/ipv6_kit.py: family attributes, IPv6 and odd peers, IPv6
relayed addresses), from its IPv4 and IPv6 clients over both listeners.

    .venv/bin/python tests/fuzz/make_corpus.py       # rewrites tests/fuzz/corpus/
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: the helpers package
sys.path.insert(0, str(HERE))  # tests/fuzz/: ipv6_kit

from helpers.hostile_kit import NOW, OWNER, corpus, ctx, new_server, rest_corpus  # noqa: E402
from ipv6_kit import (  # noqa: E402
    OWNER6,
    channel_data_seeds,
    ipv6_corpus,
    new_dual_server,
    nonce_of,
    source,
)

WORLD6, CLIENT6, EPHEMERAL = 16, 32, 8  # selector bits of fuzz_turn.py


def ipv6_seeds() -> list[bytes]:
    """Selector byte and message of every IPv6 seed: for the state machine, each source of
    either family (owner, stranger) over UDP and TCP, signed with the nonce that source got
    there (so a stranger's Allocate and a TCP one succeed too); REST users' from the owners
    over UDP; ChannelData; the IPv4 corpus from OWNER, whose relay is IPv6 there; and each IPv6
    message for the codec once."""
    dual = new_dual_server()
    seeds: list[bytes] = []
    for client_bit in (0, CLIENT6):
        base = WORLD6 | client_bit
        for s in range(4):  # source x listener
            selector = base | s
            nonce = nonce_of(dual, source(selector), "tcp" if s & 2 else "udp")
            seeds += [bytes([1, selector]) + data for data in ipv6_corpus(nonce)]
        nonce = nonce_of(dual, source(base | 1))
        seeds += [bytes([1, base | EPHEMERAL | 1]) + m for m in ipv6_corpus(nonce, ephemeral=True)]
        seeds += [bytes([1, base | 4 | s]) + data for data in channel_data_seeds() for s in (0, 1)]
    seeds += [bytes([0, 0]) + data for data in ipv6_corpus(nonce_of(dual, OWNER6))]
    seeds += [bytes([1, WORLD6 | 1]) + data for data in corpus(nonce_of(dual, OWNER))]
    return seeds


def main() -> int:
    out = HERE / "corpus"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    nonce = new_server().nonce_for(ctx(OWNER), NOW)  # the nonce secret is the same in both
    count = 0
    for data, ephemeral in [(m, 0) for m in corpus(nonce)] + [(m, 8) for m in rest_corpus(nonce)]:
        for mode, selectors in ((0, (0,)), (1, [s | ephemeral for s in range(8)])):
            for selector in selectors:
                seed = bytes([mode, selector]) + data
                name = hashlib.sha1(seed).hexdigest()[:16]
                (out / name).write_bytes(seed)
                count += 1
    for seed in ipv6_seeds():
        (out / hashlib.sha1(seed).hexdigest()[:16]).write_bytes(seed)
        count += 1
    print(f"{count} seeds in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
