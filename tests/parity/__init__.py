"""The parity suite against the official JAX code: docs/parity.md."""
