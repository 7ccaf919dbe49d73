"""Reliability suite: faults, load and hostile input against the running system (RELIABILITY.md)."""
