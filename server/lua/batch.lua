-- batch.lua: take units of several SKUs of one order, all or nothing.
--
-- Every item is checked first; units are taken only when every item passes.
-- Item i is recorded as "<request_id>#<i>" in its SKU's shard and logged to
-- that shard's log, exactly as a Deduct. The keys of one call may span
-- shards: this runs on a single Redis (not Redis Cluster).
--
-- KEYS per item i (1-based), four each, at 4*(i-1)+1 ..:
--   sku hash, users hash, shard log, sold-out hash
-- ARGV[1] user_id  ARGV[2] request_id  ARGV[3] record ttl ms
-- ARGV[2 + 3*i] sku_id, ARGV[3 + 3*i] qty, ARGV[4 + 3*i] key prefix of item i
--
-- Returns {code, n, then per item: item_code, stock_left, log_id, durable},
-- code one of
--   OK, DUP (the batch took effect before; items as recorded; log_id the
--   tail of the item's log), REFUSED (the first item refusal is the batch's
--   outcome), NO_SKU (n = the item's index), MISMATCH (likewise),
--   QTY_MAX ({code, index, cap}), NO_SHARD ({code, index}: rebuild first)
local user, rid, ttl_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n = (#ARGV - 3) / 3
local now = now_ms()
local function item(i)
  local b = 4 * (i - 1)
  return {sku = KEYS[b + 1], users = KEYS[b + 2], log = KEYS[b + 3], so = KEYS[b + 4],
          sku_id = ARGV[3 * i + 1], qty = tonumber(ARGV[3 * i + 2]),
          store = records(ARGV[3 * i + 3], now, ttl_ms), rid = rid .. '#' .. i}
end

for i = 1, n do
  if not shard_ready(ARGV[3 * i + 3]) then return {'NO_SHARD', i} end
  if redis.call('EXISTS', item(i).sku) == 0 then return {'NO_SKU', i} end
end

local first = item(1)
if find_record(first.store, first.rid) then
  local out = {'DUP', n}
  for i = 1, n do
    local it = item(i)
    local rec = find_record(it.store, it.rid)
    if not rec or rec[5] ~= it.sku_id or rec[4] ~= user or rec[3] ~= it.qty then
      return {'MISMATCH', i}
    end
    local durable = is_durable(it.sku)
    out[#out + 1] = 'OK'
    out[#out + 1] = -1
    out[#out + 1] = durable == 1 and log_tail(it.log) or ''
    out[#out + 1] = durable
  end
  return out
end

local out, refused = {'OK', n}, false
for i = 1, n do
  local it = item(i)
  local code, avail = check_take(it.sku, it.users, user, it.qty, now)
  if code == 'QTY_MAX' then return {'QTY_MAX', i, avail} end
  if code ~= 'OK' then refused = true end
  out[#out + 1] = code
  out[#out + 1] = avail
  out[#out + 1] = ''
  out[#out + 1] = 0
end
if refused then
  out[1] = 'REFUSED'
  return out
end

for i = 1, n do
  local it = item(i)
  local _, avail, log_id = take(it.sku, it.users, it.log, nil, it.store, it.sku_id, user, it.qty, it.rid, 0, now)
  announce(it.sku, it.so, it.sku_id, avail + it.qty, avail)
  out[4 * i] = avail
  out[4 * i + 1] = log_id
  out[4 * i + 2] = is_durable(it.sku)
end
return out
