"""The named error codes keep the numbers and default reason phrases of the wire."""

from __future__ import annotations

from stunner_dp import stun
from stunner_dp.stun import ErrorCode

PHRASES = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    446: "Connection Already Exists",
    447: "Connection Timeout or Failure",
    486: "Allocation Quota Reached",
    500: "Server Error",
    508: "Insufficient Capacity",
}


def test_codes_and_phrases() -> None:
    assert {int(code): code.reason for code in ErrorCode} == PHRASES
    assert stun.REASONS == PHRASES
    assert all(type(code) is int for code in stun.REASONS)
    assert ErrorCode.ALLOCATION_MISMATCH == 437
    assert ErrorCode.ALLOCATION_MISMATCH.reason == "Allocation Mismatch"
    assert ErrorCode(438) is ErrorCode.STALE_NONCE
    assert f"{ErrorCode.STALE_NONCE}" == str(ErrorCode.STALE_NONCE) == "438"


def test_encoded_alike() -> None:
    for code in ErrorCode:
        assert stun.encode_error_code(code) == stun.encode_error_code(int(code), code.reason)
        assert stun.decode_error_code(stun.encode_error_code(code)) == (int(code), code.reason)
