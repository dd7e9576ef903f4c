-- settle.lua: confirm or release a hold; a race with its expiry has one winner.
--
-- A hold past its expiry (Redis clock) is expired here and now, whether or
-- not the reaper has come by: whichever script runs first decides, and both
-- see the same record.
--
-- KEYS[1] hold record (of the Hold's request_id)   KEYS[2] shard log
-- ARGV[1] op: 'C' confirm | 'R' release   ARGV[2] this call's request_id
-- ARGV[3] sku_id   ARGV[4] key prefix of the shard ('fs:{s<n>}:')
--
-- Returns reply(code, stock_left, 0, record) with code one of
--   OK, DUP (this request_id settled the hold before), HOLD_NOT_FOUND,
--   HOLD_EXPIRED, HOLD_RELEASED, HOLD_CONFIRMED
local op, rid, sku_id, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local rec = load_record(KEYS[1])
if not rec or rec[1] ~= 'H' or rec[5] ~= sku_id then return {'HOLD_NOT_FOUND', -1, 0} end
local hold_id = string.sub(KEYS[1], #prefix + 3)

if rec[2] == 'H' then
  if now_ms() >= rec[7] then
    local left = give_back(prefix, KEYS[1], rec, 'X', '')
    log_event(KEYS[2], 'X', hold_id, rec)
    return reply('HOLD_EXPIRED', left, 0, rec)
  end
  if op == 'C' then
    local sku_key = prefix .. 'k:' .. sku_id
    rec[2], rec[8] = 'C', rid
    save_record(KEYS[1], rec, nil)
    redis.call('ZREM', prefix .. 'hx', hold_id)
    if tonumber(redis.call('HGET', sku_key, 'sale') or '-1') == rec[9] then
      redis.call('HINCRBY', sku_key, 'held', -rec[3])
      redis.call('HINCRBY', sku_key, 'conf', rec[3])
    end
    log_event(KEYS[2], 'C', hold_id, rec)
    return reply('OK', -1, 0, rec)
  end
  local left = give_back(prefix, KEYS[1], rec, 'R', rid)
  log_event(KEYS[2], 'R', hold_id, rec)
  return reply('OK', left, 0, rec)
end

if rec[8] == rid then return reply('DUP', -1, 0, rec) end
local settled = {C = 'HOLD_CONFIRMED', R = 'HOLD_RELEASED', X = 'HOLD_EXPIRED'}
return reply(settled[rec[2]], -1, 0, rec)
