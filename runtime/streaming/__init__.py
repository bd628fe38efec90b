"""The drivers of a stream's rules (`core.receiver`, `core.sender`) on either side: one direction's
`Inbox`, `StreamReader`, `StreamWriter`, `FirstHop`, `Deadline`, a writer's flow control (`flow`), a
call's v2 session (`session`) and its setup, the same for both sides (`v2`). Nothing here knows which
side it is on. It may import `core`, `encoding`, `schema`, `net` and `health`.
"""
