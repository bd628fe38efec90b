"""The service side: `serve()` and its endpoints, one owner per call (`UnaryCall`, or a `Responder`
holding its stream shape), the serving policy, `current_call()` and `$SRV` discovery. It may import every
lower package; never `calling`.
"""
