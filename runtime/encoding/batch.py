"""Batched frames (protocol v2 extension): several stream messages in one NATS message, each body
prefixed by its length as a protobuf varint. The NATS message carries `Nats-Stream-Seq` (the first
message's sequence) and `Nats-Stream-Batch` (how many); see docs/PROTOCOL.md. Pure functions."""

from __future__ import annotations

from ..core.headers import MAX_BATCH
from .protobuf import DecodeError, read_length, write_bytes

# Bytes per batch at most (and below max_payload); MAX_BATCH messages at most, and within the
# receiver's window. Bigger messages (chunks) always travel alone.
MAX_BATCH_BYTES = 64 * 1024
BATCHED_BODY_LIMIT = 16 * 1024  # a body larger than this is sent on its own


def pack(bodies: list[bytes]) -> bytes:
    """The payload of a batch: each body behind its varint length."""
    out = bytearray()
    for body in bodies:
        write_bytes(out, b"", body)  # a length-delimited field without its tag
    return bytes(out)


def unpack(data: bytes, count: int) -> list[bytes] | None:
    """The `count` bodies of a batch payload, or None when it is not exactly that (a peer's data:
    lengths past the end, bytes left over, over-long varints)."""
    bodies: list[bytes] = []
    pos, end = 0, len(data)
    try:
        for _ in range(count):
            pos, stop = read_length(data, pos, end)
            bodies.append(data[pos:stop])
            pos = stop
    except (IndexError, DecodeError):
        return None
    return bodies if pos == end else None
