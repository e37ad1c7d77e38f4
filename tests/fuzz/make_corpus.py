"""Write the fuzz target's seed corpus: real messages of every method (unsigned, signed right,
signed wrong, bad nonce), Send indications and ChannelData, and requests of TURN REST API users
with hostile usernames for the ephemeral server, each behind the two selector bytes
of tests/fuzz/fuzz_turn.py, for both targets and every source/listener/entry combination.

    .venv/bin/python tests/fuzz/make_corpus.py       # rewrites tests/fuzz/corpus/
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: the helpers package

from helpers.hostile_kit import NOW, OWNER, corpus, ctx, new_server, rest_corpus  # noqa: E402


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
    print(f"{count} seeds in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
