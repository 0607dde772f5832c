"""Test support: real servers (PostgreSQL, prism-wrapper process) and the
reusable consistency checker."""
