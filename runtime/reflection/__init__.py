"""Schema reflection, client side: what runs on an account and how to call it without generated code
(`Catalog`: services, methods, message descriptors from `$SRV` and `$SRV.PROTO` or from local
schemas), messages as proto3 JSON (`jsonmap`) and calls of every shape with serialized messages
(`DynamicClient`). Needs google `protobuf` (the `cli` extra). It may import every lower package and
`calling`; never `serving`. The CLI (`betterproto_nats.cli`) and the HTTP gateway build on it.
"""
