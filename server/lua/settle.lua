-- settle.lua: confirm or release a hold; a race with its expiry has one winner.
--
-- A hold past its expiry (Redis clock) is expired here and now, whether or
-- not the reaper has come by: whichever script runs first decides, and both
-- see the same record.
--
-- KEYS[1] shard log
-- ARGV[1] op: 'C' confirm | 'R' release   ARGV[2] this call's request_id
-- ARGV[3] sku_id   ARGV[4] hold_id (the Hold's request_id)
-- ARGV[5] key prefix of the shard ('fs:{s<n>}:')   ARGV[6] record ttl ms
--
-- Returns reply(code, stock_left, 0, record, log_id, durable) with code one of
--   OK, DUP (this request_id settled the hold before), HOLD_NOT_FOUND,
--   HOLD_EXPIRED, HOLD_RELEASED, HOLD_CONFIRMED, NO_SHARD (rebuild first)
local op, rid, sku_id, hold_id, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not shard_ready(prefix) then return {'NO_SHARD', -1, 0} end
local durable = is_durable(prefix .. 'k:' .. sku_id)
local now = now_ms()
local rec, bucket = find_record(records(prefix, now, tonumber(ARGV[6])), hold_id)
if not rec or rec[1] ~= 'H' or rec[5] ~= sku_id then return {'HOLD_NOT_FOUND', -1, 0} end

if rec[2] == 'H' then
  if now >= rec[7] then
    local left = give_back(prefix, bucket, hold_id, rec, 'X', '')
    return reply('HOLD_EXPIRED', left, 0, rec, log_event(KEYS[1], 'X', hold_id, rec), durable)
  end
  if op == 'C' then
    local sku_key = prefix .. 'k:' .. sku_id
    rec[2], rec[8] = 'C', rid
    update_record(bucket, hold_id, rec)
    redis.call('ZREM', prefix .. 'hx', hold_id)
    if tonumber(redis.call('HGET', sku_key, 'sale') or '-1') == rec[9] then
      redis.call('HINCRBY', sku_key, 'held', -rec[3])
      redis.call('HINCRBY', sku_key, 'conf', rec[3])
    end
    return reply('OK', -1, 0, rec, log_event(KEYS[1], 'C', hold_id, rec), durable)
  end
  local left = give_back(prefix, bucket, hold_id, rec, 'R', rid)
  return reply('OK', left, 0, rec, log_event(KEYS[1], 'R', hold_id, rec), durable)
end

-- Settled before: the entry that settled it is not after the log's tail.
local tail = durable == 1 and log_tail(KEYS[1]) or ''
if rec[8] == rid then return reply('DUP', -1, 0, rec, tail, durable) end
local settled = {C = 'HOLD_CONFIRMED', R = 'HOLD_RELEASED', X = 'HOLD_EXPIRED'}
return reply(settled[rec[2]], -1, 0, rec, tail, durable)
