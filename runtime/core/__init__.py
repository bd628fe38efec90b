"""The sans-I/O protocol core: header names and values, frame classification, v2 negotiation, call
states, credit accounting, loss counting and liveness bookkeeping, as plain functions and small state
machines over headers, bytes and numbers. It imports nothing of the runtime outside `core`, and
neither asyncio nor nats (tests/test_layout.py checks), so its rules are tested in milliseconds.
"""
