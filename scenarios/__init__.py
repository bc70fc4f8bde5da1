"""Multi-region runs on one machine and benchmarks that print measured figures.

Each scenario's docstring states the claim it checks.
May import every room (and the test server fixtures).
"""
