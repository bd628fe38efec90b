"""Everything NATS: the `Transport` interface and its nats-py implementation, correctness fixes for
nats-py (`nats_fixes`) and fast paths over its internals (`nats_fast`), the in-memory bus, and
`InboxMux` (all of a connection's inboxes under one subscription, and how far the connection has
read). It may import `core` only.
"""
