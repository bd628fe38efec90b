"""One direction of a stream on either side (`Inbox`, `StreamReader`, `StreamWriter`, `FirstHop`,
`Deadline`), a writer's flow control (`flow`) and a call's v2 session (`session`). Nothing here knows
which side it is on. It may import `core`, `encoding`, `schema`, `net` and `health`.
"""
