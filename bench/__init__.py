"""Benchmarks of the stream gateway: throughput, latency, admission rate, memory, against a ceiling server.

``python -m bench`` runs everything (about 20 minutes); ``python -m bench --quick`` about a minute. See BENCHMARKS.md.
"""
