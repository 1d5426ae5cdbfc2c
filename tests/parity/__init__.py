"""The parity suite against the official JAX agents (a package, so that its conftest.py is not imported as
the top-level `conftest` that tests/*.py import)."""
