"""Measurements: ``flashstock bench`` (one node against an echo baseline) and
``flashstock bench-cluster`` (failover, scale-out, etcd writes)."""
