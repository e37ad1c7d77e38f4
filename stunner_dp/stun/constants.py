"""Wire constants of STUN (RFC 8489) and TURN (RFC 8656)."""

from __future__ import annotations

from enum import IntEnum

# Message classes, already placed at their bit positions (C1 = bit 8, C0 = bit 4)
# so that ``type = spread(method) | cls``.
CLASS_REQUEST = 0x000
CLASS_INDICATION = 0x010
CLASS_SUCCESS = 0x100
CLASS_ERROR = 0x110

METHOD_BINDING = 0x001
METHOD_ALLOCATE = 0x003
METHOD_REFRESH = 0x004
METHOD_SEND = 0x006
METHOD_DATA = 0x007
METHOD_CREATE_PERMISSION = 0x008
METHOD_CHANNEL_BIND = 0x009
METHOD_CONNECT = 0x00A  # RFC 6062 (TURN over TCP relays)
METHOD_CONNECTION_BIND = 0x00B
METHOD_CONNECTION_ATTEMPT = 0x00C

MAGIC_COOKIE = 0x2112A442
HEADER_SIZE = 20
# Attribute types from here up may be ignored when unknown; below, they earn a 420.
COMPREHENSION_OPTIONAL = 0x8000

# Comprehension-required range (< 0x8000).
ATTR_MAPPED_ADDRESS = 0x0001
ATTR_CHANGE_REQUEST = 0x0003  # RFC 5780 7.2; known only where NAT discovery is on
ATTR_USERNAME = 0x0006
ATTR_MESSAGE_INTEGRITY = 0x0008
ATTR_ERROR_CODE = 0x0009
ATTR_UNKNOWN_ATTRIBUTES = 0x000A
ATTR_CHANNEL_NUMBER = 0x000C
ATTR_LIFETIME = 0x000D
ATTR_XOR_PEER_ADDRESS = 0x0012
ATTR_DATA = 0x0013
ATTR_REALM = 0x0014
ATTR_NONCE = 0x0015
ATTR_XOR_RELAYED_ADDRESS = 0x0016
ATTR_REQUESTED_ADDRESS_FAMILY = 0x0017
ATTR_EVEN_PORT = 0x0018
ATTR_REQUESTED_TRANSPORT = 0x0019
ATTR_DONT_FRAGMENT = 0x001A
ATTR_MESSAGE_INTEGRITY_SHA256 = 0x001C
ATTR_PASSWORD_ALGORITHM = 0x001D
ATTR_USERHASH = 0x001E
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_RESERVATION_TOKEN = 0x0022
ATTR_PRIORITY = 0x0024
ATTR_USE_CANDIDATE = 0x0025
ATTR_CONNECTION_ID = 0x002A
# Comprehension-optional range (>= 0x8000).
ATTR_ADDITIONAL_ADDRESS_FAMILY = 0x8000
ATTR_ADDRESS_ERROR_CODE = 0x8001
ATTR_PASSWORD_ALGORITHMS = 0x8002
ATTR_ALTERNATE_DOMAIN = 0x8003
ATTR_ICMP = 0x8004
ATTR_SOFTWARE = 0x8022
ATTR_ALTERNATE_SERVER = 0x8023
ATTR_FINGERPRINT = 0x8028
ATTR_ICE_CONTROLLED = 0x8029
ATTR_ICE_CONTROLLING = 0x802A
ATTR_RESPONSE_ORIGIN = 0x802B
ATTR_OTHER_ADDRESS = 0x802C

# PASSWORD-ALGORITHM numbers (RFC 8489 18.5)
PASSWORD_ALGORITHM_MD5 = 0x0001
PASSWORD_ALGORITHM_SHA256 = 0x0002

# The "nonce cookie" (RFC 8489 9.2): a NONCE starting with it is followed by 4 base64 characters
# holding the 24 STUN security feature bits (18.1), numbered from the least significant bit as
# verified erratum 6290 says (Appendix B.1's "AAAC" is bit 1, username anonymity).
NONCE_COOKIE = "obMatJos2"
SECURITY_FEATURE_PASSWORD_ALGORITHMS = 1 << 0
SECURITY_FEATURE_USERNAME_ANONYMITY = 1 << 1

# CHANGE-REQUEST flags (RFC 5780 7.2): answer from the other IP and/or the other port
CHANGE_IP = 0x4
CHANGE_PORT = 0x2

FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02

TRANSPORT_UDP = 17
TRANSPORT_TCP = 6

# The server answers 420 for a comprehension-required attribute outside this set.
KNOWN_ATTRIBUTES: frozenset[int] = frozenset(
    {
        ATTR_MAPPED_ADDRESS,
        ATTR_USERNAME,
        ATTR_MESSAGE_INTEGRITY,
        ATTR_ERROR_CODE,
        ATTR_UNKNOWN_ATTRIBUTES,
        ATTR_CHANNEL_NUMBER,
        ATTR_LIFETIME,
        ATTR_XOR_PEER_ADDRESS,
        ATTR_DATA,
        ATTR_REALM,
        ATTR_NONCE,
        ATTR_XOR_RELAYED_ADDRESS,
        ATTR_REQUESTED_ADDRESS_FAMILY,
        ATTR_EVEN_PORT,
        ATTR_REQUESTED_TRANSPORT,
        ATTR_DONT_FRAGMENT,
        ATTR_MESSAGE_INTEGRITY_SHA256,
        ATTR_PASSWORD_ALGORITHM,
        ATTR_USERHASH,
        ATTR_XOR_MAPPED_ADDRESS,
        ATTR_RESERVATION_TOKEN,
        ATTR_PRIORITY,
        ATTR_USE_CANDIDATE,
        ATTR_CONNECTION_ID,
        ATTR_ADDITIONAL_ADDRESS_FAMILY,
        ATTR_ADDRESS_ERROR_CODE,
        ATTR_PASSWORD_ALGORITHMS,
        ATTR_ALTERNATE_DOMAIN,
        ATTR_ICMP,
        ATTR_SOFTWARE,
        ATTR_ALTERNATE_SERVER,
        ATTR_FINGERPRINT,
        ATTR_ICE_CONTROLLED,
        ATTR_ICE_CONTROLLING,
        ATTR_RESPONSE_ORIGIN,
        ATTR_OTHER_ADDRESS,
    }
)

_METHOD_NAMES: dict[int, str] = {
    METHOD_BINDING: "Binding",
    METHOD_ALLOCATE: "Allocate",
    METHOD_REFRESH: "Refresh",
    METHOD_SEND: "Send",
    METHOD_DATA: "Data",
    METHOD_CREATE_PERMISSION: "CreatePermission",
    METHOD_CHANNEL_BIND: "ChannelBind",
    METHOD_CONNECT: "Connect",
    METHOD_CONNECTION_BIND: "ConnectionBind",
    METHOD_CONNECTION_ATTEMPT: "ConnectionAttempt",
}


def method_name(method: int) -> str:
    """Human-readable method name for logs and metrics labels."""
    name = _METHOD_NAMES.get(method)
    # Unknown methods still get a stable label rather than an exception.
    return name if name is not None else f"Method(0x{method:03X})"


class ErrorCode(IntEnum):
    """STUN/TURN error codes (RFC 8489 section 14.8, RFC 8656 section 18.10), each with its
    default reason phrase: ``ErrorCode.STALE_NONCE.reason == "Stale Nonce"``."""

    reason: str

    def __new__(cls, code: int, reason: str) -> ErrorCode:
        member = int.__new__(cls, code)
        member._value_ = code
        member.reason = reason
        return member

    TRY_ALTERNATE = 300, "Try Alternate"
    BAD_REQUEST = 400, "Bad Request"
    UNAUTHORIZED = 401, "Unauthorized"
    FORBIDDEN = 403, "Forbidden"
    UNKNOWN_ATTRIBUTE = 420, "Unknown Attribute"
    ALLOCATION_MISMATCH = 437, "Allocation Mismatch"
    STALE_NONCE = 438, "Stale Nonce"
    ADDRESS_FAMILY_NOT_SUPPORTED = 440, "Address Family not Supported"
    WRONG_CREDENTIALS = 441, "Wrong Credentials"
    UNSUPPORTED_TRANSPORT_PROTOCOL = 442, "Unsupported Transport Protocol"
    PEER_ADDRESS_FAMILY_MISMATCH = 443, "Peer Address Family Mismatch"
    CONNECTION_ALREADY_EXISTS = 446, "Connection Already Exists"  # RFC 6062
    CONNECTION_TIMEOUT_OR_FAILURE = 447, "Connection Timeout or Failure"  # RFC 6062
    ALLOCATION_QUOTA_REACHED = 486, "Allocation Quota Reached"
    SERVER_ERROR = 500, "Server Error"
    INSUFFICIENT_CAPACITY = 508, "Insufficient Capacity"


# The same phrases by plain code: encode_error_code's default reason.
REASONS: dict[int, str] = {int(code): code.reason for code in ErrorCode}
