-- fence.lua: a new owner of a shard raises the shard's stored epoch to its own.
--
-- Run once a node claimed a shard in etcd and before its duties start: from
-- then on every duty write of an older owner is refused (epoch_ok in
-- _lib.lua). Also records who owns it and since when (Redis's clock), for
-- operators and the failover measurement.
--
-- KEYS[1] shard meta hash
-- ARGV[1] key prefix of the shard ('fs:{s<n>}:')   ARGV[2] the owner's epoch   ARGV[3] its node id
--
-- Returns {1, epoch before}, or {-1, stored epoch}: a newer owner's epoch is stored.
local before = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if not epoch_ok(ARGV[1], ARGV[2]) then return {-1, before} end
redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'owned_ms', now_ms())
return {1, before}
