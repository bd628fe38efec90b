"""Everything NATS: the `Transport` interface and its nats-py implementation, nats-py workarounds
(`nats_compat`), the in-memory bus, and `InboxMux` (all of a connection's inboxes under one
subscription, and how far the connection has read). It may import `core` only.
"""
