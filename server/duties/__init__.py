"""What the owner of a shard runs: ownership, the persister, the reaper, the
rebuilder and the reconciliation duty."""
