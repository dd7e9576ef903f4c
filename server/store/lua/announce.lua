-- announce.lua: the persister's word that a shard's log is in the ledger up to an entry.
--
-- Run after the ledger committed the entries: records the persisted cursor
-- (durable replies compare their entry with it), tells every node over
-- pub/sub, and trims the log up to the cursor. A duty write: fenced by the
-- owner's epoch, like the ledger commit before it.
--
-- KEYS[1] persisted cursor (string)   KEYS[2] shard log
-- ARGV[1] key prefix of the shard ('fs:{s<n>}:')   ARGV[2] owner epoch ('' = standalone)
-- ARGV[3] the last persisted entry id   ARGV[4] the id just after it (trim below)
-- ARGV[5] the persisted channel   ARGV[6] the message ('<shard> <id>')
--
-- Returns 1, or -1: refused, a newer owner's epoch is stored (nothing written).
if not epoch_ok(ARGV[1], ARGV[2]) then return -1 end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[5], ARGV[6])
redis.call('XTRIM', KEYS[2], 'MINID', ARGV[4])
return 1
