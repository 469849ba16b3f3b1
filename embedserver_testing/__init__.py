"""Test fixtures and measurement helpers: tiny random-weight models, server processes. Used by the tests
and benchmarks, never by the server; not shipped in the wheel."""
