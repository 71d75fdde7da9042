"""A store in a box: simulated devices speaking the gateway's real protocols, plus harnesses.

Used by `scripts/demo`, the tests and `scripts/bench.py` alike.
"""
