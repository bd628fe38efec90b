"""The `betterproto-nats` command line (ls, describe, call, stats) on `reflection`. It may import every
lower package; the package's top level (`__main__`) dispatches to it."""
