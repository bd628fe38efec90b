"""The service side: `serve()` and its endpoints, one responder per call (`UnaryCall`, the stream
shapes' `Responder`s), the serving policy, `current_call()` and `$SRV` discovery. It may import every
lower package; never `calling`.
"""
