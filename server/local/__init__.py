"""The local stack: real Redis, etcd, PostgreSQL and node processes on loopback.

Used by ``flashstock cluster up``, ``flashstock demo``, the benchmarks and the
tests alike (one process harness, :mod:`.procs`).
"""
