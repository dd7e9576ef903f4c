-- deduct.lua: take units of one SKU, for good (Deduct) or until expiry (Hold).
--
-- In one atomic step: SKU present? request_id seen (first answer)? qty within
-- the cap? window open and not paused (Redis clock)? stock left? per-user
-- limit? enough stock? Then decrement, record the answer, append the shard
-- log entry, and announce a sell-out at zero.
--
-- KEYS[1] sku hash        KEYS[2] users hash     KEYS[3] record of request_id
-- KEYS[4] shard log       KEYS[5] hold expiries  KEYS[6] sold-out hash
-- ARGV[1] sku_id  ARGV[2] user_id  ARGV[3] qty  ARGV[4] request_id
-- ARGV[5] hold ttl ms (0 = Deduct)  ARGV[6] record ttl s
--
-- Returns {code, stock_left, sold_out_sv, kind, state, qty, user, sku,
--          taken_ms, exp_ms} where code is one of
--   OK, DUP (the record's first answer), SOLD_OUT, INSUFFICIENT, LIMIT,
--   NOT_ON_SALE, QTY_MAX (stock_left = the cap), NO_SKU,
--   MISMATCH (request_id used before with other arguments)
local sku_id, user, qty, rid = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local hold_ms, ttl_s = tonumber(ARGV[5]), tonumber(ARGV[6])

if redis.call('EXISTS', KEYS[1]) == 0 then return {'NO_SKU', -1, 0} end

local rec = load_record(KEYS[3])
if rec then
  local kind = hold_ms > 0 and 'H' or 'D'
  if rec[5] ~= sku_id or rec[4] ~= user or rec[3] ~= qty or rec[1] ~= kind then
    return {'MISMATCH', -1, 0}
  end
  return reply('DUP', -1, 0, rec)
end

local now = now_ms()
local code, avail, sv = check_take(KEYS[1], KEYS[2], user, qty, now)
if code ~= 'OK' then return {code, avail, sv} end

rec, avail = take(KEYS, sku_id, user, qty, rid, hold_ms, ttl_s, now)
return reply('OK', avail, announce(KEYS[1], KEYS[6], sku_id, avail + qty, avail), rec)
