"""What calls may carry besides messages: chunked blobs, JetStream persistence, interceptors,
retries. Used by both sides; it may import every package below `calling` and `serving`, never those.
OpenTelemetry's interceptors are the top-level `betterproto_nats.otel` (an optional extra).
"""
