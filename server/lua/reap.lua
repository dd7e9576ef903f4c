-- reap.lua: return the units of a shard's holds whose expiry has passed.
--
-- Each due hold is expired exactly once: its record moves held -> expired in
-- the same step as the units go back, and a Confirm or Release that comes
-- later finds it expired (settle.lua).
--
-- KEYS[1] hold expiries (sorted set)   KEYS[2] shard log
-- ARGV[1] key prefix of the shard ('fs:{s<n>}:')   ARGV[2] most holds to reap
-- ARGV[3] record ttl ms   ARGV[4] the reaper's owner epoch ('' = standalone)
--
-- Returns the number of holds expired, or -1: refused, a newer owner's epoch
-- is stored (nothing was written).
local prefix, most = ARGV[1], tonumber(ARGV[2])
if not epoch_ok(prefix, ARGV[4]) then return -1 end
if not shard_ready(prefix) then return 0 end
local now = now_ms()
local store = records(prefix, now, tonumber(ARGV[3]))
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, most)
local expired = 0
for _, hold_id in ipairs(due) do
  local rec, bucket = find_record(store, hold_id)
  redis.call('ZREM', KEYS[1], hold_id)
  if rec and rec[2] == 'H' then
    give_back(prefix, bucket, hold_id, rec, 'X', '')
    log_event(KEYS[2], 'X', hold_id, rec)
    expired = expired + 1
  end
end
return expired
