-- deduct.lua: take units, for good (Deduct) or until expiry (Hold), for one
-- or more requests of one shard, each exactly as if it ran alone, in order.
--
-- Per request, in one atomic step: shard state whole? SKU present?
-- request_id seen (first answer)? admission token valid, if the SKU wants
-- one? within the user's attempts per second (counted here, on Redis's
-- clock: every node counts alike)? qty within the cap? window open and not
-- paused (Redis clock)? stock left? per-user limit? enough stock? Then
-- decrement, record the answer, append the shard log entry, and announce a
-- sell-out at zero. A node coalesces concurrent requests of a shard into one
-- call.
--
-- KEYS[1] shard log   KEYS[2] hold expiries   KEYS[3] sold-out hash
-- KEYS[2 + 2*i], KEYS[3 + 2*i]   request i's sku hash and users hash (i = 1..n)
-- ARGV[1] key prefix of the shard ('fs:{s<n>}:')   ARGV[2] record ttl ms
-- ARGV[6*i - 3 .. 6*i + 2]   request i: sku_id, user_id, qty, request_id,
--                            hold ttl ms (0 = Deduct), token ok (1: the node
--                            found the call's admission token valid, else 0)
--
-- Returns one reply per request, in order (see reply() in _lib.lua):
--   {code, stock_left, sold_out_sv, kind, state, qty, user, sku, taken_ms,
--    exp_ms, log_id, durable}
-- where code is one of OK, DUP (the record's first answer; log_id is the
-- log's tail, which the first answer's entry is not after), SOLD_OUT,
-- INSUFFICIENT, LIMIT, NOT_ON_SALE, QTY_MAX (stock_left = the cap),
-- RATE_LIMITED ({code, -1, 0, ms until the user's window ends}), TOKEN (the
-- SKU needs a valid admission token; nothing counted), NO_SKU,
-- MISMATCH (the SKU's request_id was used before by another kind of call or
-- with other arguments), NO_SHARD (the shard's state is missing: rebuild it,
-- then send again).
local n = (#KEYS - 3) / 2
if not shard_ready(ARGV[1]) then
  local out = {}
  for i = 1, n do out[i] = {'NO_SHARD', -1, 0} end
  return out
end
local now = now_ms()
local ttl_ms = tonumber(ARGV[2])
local out = {}

local function one(sku_key, users_key, sku_id, user, qty, rid, hold_ms, token_ok)
  if redis.call('EXISTS', sku_key) == 0 then return {'NO_SKU', -1, 0} end
  local store = records(ARGV[1], sku_id, now, ttl_ms)
  local rec = find_record(store, rid)
  if rec then
    local kind = hold_ms > 0 and 'H' or 'D'
    if rec[1] ~= kind or rec[4] ~= user or rec[3] ~= qty then
      return {'MISMATCH', -1, 0}
    end
    local durable = is_durable(sku_key)
    return reply('DUP', -1, 0, rec, durable == 1 and log_tail(KEYS[1]) or '', durable)
  end
  if not token_admits(sku_key, token_ok) then return {'TOKEN', -1, 0} end
  local wait = rate_wait(ARGV[1], sku_key, sku_id, user, now)
  if wait > 0 then return {'RATE_LIMITED', -1, 0, wait} end
  local code, avail, sv = check_take(sku_key, users_key, user, qty, now)
  if code ~= 'OK' then return {code, avail, sv} end
  local log_id
  rec, avail, log_id = take(sku_key, users_key, KEYS[1], KEYS[2], store, sku_id, user, qty, rid, hold_ms, now)
  return reply('OK', avail, announce(sku_key, KEYS[3], sku_id, avail + qty, avail), rec, log_id, is_durable(sku_key))
end

for i = 1, n do
  local a = 6 * i - 3
  out[i] = one(KEYS[2 + 2 * i], KEYS[3 + 2 * i], ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]),
               ARGV[a + 3], tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]))
end
return out
