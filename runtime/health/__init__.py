"""Is the peer there, does our loop keep up: per-stream (`liveness`) and per-connection (`peers`)
heartbeats, the loop's lag (`load`) and admission control (`admission`). It may import `core` and
`net`.
"""
