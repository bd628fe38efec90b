"""`python -m betterproto_nats serve module:Class ...`: see `betterproto_nats.runner`."""

from .runner import main

main()
