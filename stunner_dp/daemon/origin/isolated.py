"""Parse and validate a config away from the event loop, in a child process.

Parsing is pure Python work: YAML and validation of a big file hold the GIL for seconds, so in a
thread they would still starve the loop that relays media (bench/config_bomb.py measures the
three ways). A child process costs a fresh interpreter per reload (a few hundred ms, off the
loop) and buys three things: the loop keeps running, whatever the file makes the parser
allocate is the child's memory and goes when it exits (capped at CHILD_MEMORY_BYTES), and a
parse that hangs is killed after PARSE_TIMEOUT. The bounds themselves (size, depth, aliases,
counts) are the config package's (`stunner_dp.config.limits`); this only moves the work.

    config = await load_file("/etc/stunnerd/stunnerd.conf")      # ConfigError when refused
    config = await load_text(message, "the CDS message")

A small config (under INLINE_BYTES, at most INLINE_VALUES values) is parsed here at once: that
costs well under a millisecond of loop time, where a child costs a fresh interpreter. One that
breaks the tight values bound goes to the child with the full bounds.

`STUNNER_DP_CONFIG_PARSE=thread` (or `inline`) parses in a thread (on the loop) instead, for
the benchmark's comparison.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import resource
import sys
from typing import Any

from stunner_dp.config import ConfigError, StunnerConfig, load_config_file, load_config_text
from stunner_dp.config.limits import MAX_CONFIG_BYTES, ValuesExceeded

__all__ = ["CHILD_MEMORY_BYTES", "PARSE_TIMEOUT", "load_file", "load_text"]

PARSE_TIMEOUT = 60.0
CHILD_MEMORY_BYTES = 2 * 1024 * 1024 * 1024  # address space; a bounded config needs < 500 MB
MODE_ENV = "STUNNER_DP_CONFIG_PARSE"
INLINE_BYTES = 64 * 1024
INLINE_VALUES = 5_000


def _mode() -> str:
    mode = os.environ.get(MODE_ENV, "process")
    return mode if mode in ("process", "thread", "inline") else "process"


async def load_file(path: str) -> StunnerConfig:
    mode = _mode()
    if mode == "inline":
        return load_config_file(path)
    if mode == "thread":
        return await asyncio.to_thread(load_config_file, path)
    with contextlib.suppress(OSError, ValuesExceeded):  # unreadable: the child says why
        if os.stat(path).st_size <= INLINE_BYTES:
            return load_config_file(path, max_values=INLINE_VALUES)
    return await _in_child(["file", path], b"", path)


async def load_text(text: str, source: str) -> StunnerConfig:
    mode = _mode()
    if mode == "inline":
        return load_config_text(text)
    if mode == "thread":
        return await asyncio.to_thread(load_config_text, text)
    if len(text) <= INLINE_BYTES:
        with contextlib.suppress(ValuesExceeded):
            return load_config_text(text, max_values=INLINE_VALUES)
    data = text.encode("utf-8", "surrogateescape")
    if len(data) > MAX_CONFIG_BYTES:  # refused here: no child for what it would refuse
        return load_config_text(text)
    return await _in_child(["text"], data, source)


def _failed(source: str, why: str) -> ConfigError:
    return ConfigError(
        "config",
        None,
        "the running config stays; check the file's size and shape (stunnerd -d -c FILE)",
        problem=f"{source} could not be parsed: {why}",
    )


async def _in_child(args: list[str], stdin: bytes, source: str) -> StunnerConfig:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        __name__,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), PARSE_TIMEOUT)
    except TimeoutError:
        raise _failed(source, f"it took longer than {PARSE_TIMEOUT:g} s") from None
    finally:
        if proc.returncode is None:  # timed out or cancelled: the child goes with us
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await proc.wait()
    if proc.returncode != 0 or not out:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise _failed(source, f"the parser exited with {proc.returncode} ({tail[0][:200]})")
    # our own child's output: the pickle is as trusted as the code that wrote it
    kind, value = pickle.loads(out)
    if kind == "error":
        assert isinstance(value, ConfigError)
        raise value
    assert isinstance(value, StunnerConfig)
    return value


def _child(argv: list[str]) -> int:
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_BYTES, CHILD_MEMORY_BYTES))
    result: tuple[str, Any]
    try:
        if argv[0] == "file":
            config = load_config_file(argv[1])
        else:
            config = load_config_text(sys.stdin.buffer.read().decode("utf-8", "surrogateescape"))
        result = ("ok", config)
    except ConfigError as exc:
        result = ("error", exc)
    except MemoryError:
        result = ("error", _failed("the config", f"more than {CHILD_MEMORY_BYTES} bytes"))
    except Exception as exc:  # whatever it is, the parent gets a named refusal
        result = ("error", _failed("the config", f"{type(exc).__name__}: {exc}"[:300]))
    sys.stdout.buffer.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
