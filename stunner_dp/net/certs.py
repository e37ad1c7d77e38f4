"""A listener's certificate and key, as STUNner stores them: base64 of PEM (the cert may be a
chain). The TLS listener (`ssl`) and the DTLS one (pyOpenSSL) load them from files, so both
decode them here into a private temporary directory that is gone once they are loaded."""

from __future__ import annotations

import base64
import ssl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stunner_dp.config import ListenerConfig


@contextmanager
def pem_files(listener: ListenerConfig) -> Iterator[tuple[Path, Path]]:
    """(cert file, key file) of the listener's cert and key, decoded, while the block runs.
    Raises binascii.Error when they are not base64."""
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert.write_bytes(base64.b64decode(listener.cert))
        key.write_bytes(base64.b64decode(listener.key))
        yield cert, key


def tls_context(listener: ListenerConfig) -> ssl.SSLContext:
    """A TLS server context from the listener's cert and key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pem_files(listener) as (cert, key):
        context.load_cert_chain(cert, key)
    return context
