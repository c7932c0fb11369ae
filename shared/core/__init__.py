"""The pure decision core (no I/O): phases, the evidence ledger, verdicts, traffic plans, what
the channel reads. It imports only itself and shared.policy (tests/test_layout.py checks it)."""
