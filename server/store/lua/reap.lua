-- reap.lua: return the units of a shard's holds whose expiry has passed.
--
-- Each due hold is expired exactly once: its record moves held -> expired in
-- the same step as the units go back, and a Confirm or Release that comes
-- later finds it expired (settle.lua).
--
-- KEYS[1] hold expiries (sorted set of '<sku>\n<hold_id>')   KEYS[2] shard log
-- ARGV[1] key prefix of the shard ('fs:{s<n>}:')   ARGV[2] most holds to reap
-- ARGV[3] record ttl ms   ARGV[4] the reaper's owner epoch ('' = standalone)
--
-- Returns the number of holds expired, or -1: refused, a newer owner's epoch
-- is stored (nothing was written).
local prefix, most = ARGV[1], tonumber(ARGV[2])
if not epoch_ok(prefix, ARGV[4]) then return -1 end
if not shard_ready(prefix) then return 0 end
local now = now_ms()
local ttl_ms = tonumber(ARGV[3])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, most)
local expired = 0
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  local sku_id, hold_id = string.match(member, '^(.-)\n(.*)$')
  if sku_id then
    local rec, bucket = find_record(records(prefix, sku_id, now, ttl_ms), hold_id)
    if rec and rec[1] == 'H' and rec[2] == 'H' then
      give_back(prefix, bucket, hold_id, rec, 'X', '')
      log_event(KEYS[2], 'X', hold_id, rec)
      expired = expired + 1
    end
  end
end
return expired
