"""Batched frames (protocol v2 extension): several stream messages in one NATS message, each body
prefixed by its length as a protobuf varint. The NATS message carries `Nats-Stream-Seq` (the first
message's sequence) and `Nats-Stream-Batch` (how many); see docs/PROTOCOL.md. Pure functions: the
framing is the protocol's, so it lives in `core` (the receiving rules unpack with it)."""

from __future__ import annotations

# Bytes per batch at most (and below max_payload); MAX_BATCH messages at most, and within the
# receiver's window. Bigger messages (chunks) always travel alone.
MAX_BATCH_BYTES = 64 * 1024
BATCHED_BODY_LIMIT = 16 * 1024  # a body larger than this is sent on its own
_MAX_LENGTH_BYTES = 5  # a length prefix's varint, at most (as protobuf reads lengths)


def pack(bodies: list[bytes]) -> bytes:
    """The payload of a batch: each body behind its varint length."""
    out = bytearray()
    for body in bodies:
        size = len(body)
        while size >= 0x80:
            out.append(size & 0x7F | 0x80)
            size >>= 7
        out.append(size)
        out += body
    return bytes(out)


def unpack(data: bytes, count: int) -> list[bytes] | None:
    """The `count` bodies of a batch payload, or None when it is not exactly that (a peer's data:
    lengths past the end, bytes left over, over-long varints)."""
    bodies: list[bytes] = []
    pos, end = 0, len(data)
    for _ in range(count):
        if pos >= end:
            return None
        size = data[pos]
        pos += 1
        if size >= 0x80:  # a longer length: the rest of its varint
            size &= 0x7F
            shift = 7
            while True:
                if pos >= end or shift >= 7 * _MAX_LENGTH_BYTES:
                    return None
                byte = data[pos]
                pos += 1
                size |= (byte & 0x7F) << shift
                if byte < 0x80:
                    break
                shift += 7
        stop = pos + size
        if stop > end:
            return None
        bodies.append(data[pos:stop])
        pos = stop
    return bodies if pos == end else None
