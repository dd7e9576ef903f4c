-- settle.lua: confirm or release a hold; a race with its expiry has one winner.
--
-- A hold past its expiry (Redis clock) is expired here and now, whether or
-- not the reaper has come by: whichever script runs first decides, and both
-- see the same record. A hold of an earlier sale of the SKU (it was put
-- again since) confirms nothing: it is voided, its units go to nobody.
--
-- The call that settles a hold records itself under its own request_id in
-- the SKU's records ({'C'|'R', hold_id}): the same id again gets the first
-- answer (DUP); the id used by another call (a Release of the same hold, a
-- Confirm of another hold, a Deduct...) is refused (MISMATCH).
--
-- KEYS[1] shard log
-- ARGV[1] op: 'C' confirm | 'R' release   ARGV[2] this call's request_id
-- ARGV[3] sku_id   ARGV[4] hold_id (the Hold's request_id)
-- ARGV[5] key prefix of the shard ('fs:{s<n>}:')   ARGV[6] record ttl ms
--
-- Returns reply(code, stock_left, 0, record, log_id, durable) with code one of
--   OK, DUP (this request_id settled the hold before), HOLD_NOT_FOUND,
--   HOLD_EXPIRED, HOLD_RELEASED, HOLD_CONFIRMED, HOLD_VOIDED (the hold is of
--   an earlier sale of the SKU), MISMATCH ({code}: the request_id was used by
--   another call), NO_SHARD (rebuild first)
local op, rid, sku_id, hold_id, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not shard_ready(prefix) then return {'NO_SHARD', -1, 0} end
local sku_key = prefix .. 'k:' .. sku_id
local durable = is_durable(sku_key)
local now = now_ms()
local store = records(prefix, sku_id, now, tonumber(ARGV[6]))

local own = find_record(store, rid)
if own and (own[1] ~= op or own[2] ~= hold_id) then return {'MISMATCH', -1, 0} end
local rec, bucket = find_record(store, hold_id)
if not rec or rec[1] ~= 'H' then return {'HOLD_NOT_FOUND', -1, 0} end
if own then
  -- Settled by this very call before: the entry that settled it is not after the log's tail.
  return reply('DUP', -1, 0, rec, durable == 1 and log_tail(KEYS[1]) or '', durable)
end

if rec[2] == 'H' then
  if tonumber(redis.call('HGET', sku_key, 'sale') or '-1') ~= rec[9] then
    -- An earlier sale's hold: closed (released to nobody), never confirmed.
    give_back(prefix, bucket, hold_id, rec, 'R', '')
    return reply('HOLD_VOIDED', -1, 0, rec, log_event(KEYS[1], 'R', hold_id, rec), durable)
  end
  if now >= rec[7] then
    local left = give_back(prefix, bucket, hold_id, rec, 'X', '')
    return reply('HOLD_EXPIRED', left, 0, rec, log_event(KEYS[1], 'X', hold_id, rec), durable)
  end
  add_record(store, rid, {op, hold_id})
  if op == 'C' then
    rec[2], rec[8] = 'C', rid
    update_record(bucket, hold_id, rec)
    redis.call('ZREM', prefix .. 'hx', hold_member(sku_id, hold_id))
    redis.call('HINCRBY', sku_key, 'held', -rec[3])
    redis.call('HINCRBY', sku_key, 'conf', rec[3])
    return reply('OK', -1, 0, rec, log_event(KEYS[1], 'C', hold_id, rec), durable)
  end
  local left = give_back(prefix, bucket, hold_id, rec, 'R', rid)
  return reply('OK', left, 0, rec, log_event(KEYS[1], 'R', hold_id, rec), durable)
end

-- Settled before by another call (or expired, or voided).
local tail = durable == 1 and log_tail(KEYS[1]) or ''
if rec[2] == 'R' and rec[8] == '' then return reply('HOLD_VOIDED', -1, 0, rec, tail, durable) end
local settled = {C = 'HOLD_CONFIRMED', R = 'HOLD_RELEASED', X = 'HOLD_EXPIRED'}
return reply(settled[rec[2]], -1, 0, rec, tail, durable)
