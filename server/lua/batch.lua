-- batch.lua: take units of several SKUs of one order, all or nothing.
--
-- Every item is checked first; units are taken only when every item passes.
-- Item i is recorded as "<request_id>#<i>" in its SKU's shard and logged to
-- that shard's log, exactly as a Deduct. The keys of one call may span
-- shards: this runs on a single Redis (not Redis Cluster).
--
-- KEYS per item i (1-based), five each, at 5*(i-1)+1 ..:
--   sku hash, users hash, record of "<request_id>#<i>", shard log, sold-out hash
-- ARGV[1] user_id  ARGV[2] request_id  ARGV[3] record ttl s
-- ARGV[4 + 2*(i-1)] sku_id of item i   ARGV[5 + 2*(i-1)] qty of item i
--
-- Returns {code, n, then per item: item_code, stock_left}, code one of
--   OK, DUP (the batch took effect before; items as recorded), REFUSED (the
--   first item refusal is the batch's outcome), NO_SKU (stock_left = index),
--   MISMATCH, QTY_MAX (per item as in deduct.lua)
local user, rid, ttl_s = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n = (#ARGV - 3) / 2
local function item_keys(i)
  local b = 5 * (i - 1)
  return {KEYS[b + 1], KEYS[b + 2], KEYS[b + 3], KEYS[b + 4], nil, KEYS[b + 5]}
end

for i = 1, n do
  if redis.call('EXISTS', item_keys(i)[1]) == 0 then return {'NO_SKU', i} end
end

local first = load_record(item_keys(1)[3])
if first then
  local out = {'DUP', n}
  for i = 1, n do
    local rec = load_record(item_keys(i)[3])
    if not rec or rec[5] ~= ARGV[2 + 2 * i] or rec[4] ~= user or rec[3] ~= tonumber(ARGV[3 + 2 * i]) then
      return {'MISMATCH', i}
    end
    out[#out + 1] = 'OK'
    out[#out + 1] = -1
  end
  return out
end

local now = now_ms()
local out, refused = {'OK', n}, false
for i = 1, n do
  local k = item_keys(i)
  local code, avail = check_take(k[1], k[2], user, tonumber(ARGV[3 + 2 * i]), now)
  if code == 'QTY_MAX' then return {'QTY_MAX', i, avail} end
  if code ~= 'OK' then refused = true end
  out[#out + 1] = code
  out[#out + 1] = avail
end
if refused then
  out[1] = 'REFUSED'
  return out
end

for i = 1, n do
  local k = item_keys(i)
  local sku_id, qty = ARGV[2 + 2 * i], tonumber(ARGV[3 + 2 * i])
  local _, avail = take(k, sku_id, user, qty, rid .. '#' .. i, 0, ttl_s, now)
  announce(k[1], k[6], sku_id, avail + qty, avail)
  out[2 + 2 * i] = avail
end
return out
