"""What calls may carry besides messages: chunked blobs, JetStream persistence, interceptors and
OpenTelemetry, retries. Used by both sides; it may import every package below
`calling` and `serving`, never those.
"""
