-- batch.lua: take units of several SKUs of one order, all or nothing.
--
-- Every item is checked first; units are taken only when every item passes.
-- Item i is recorded under the batch's request_id in its own SKU's records
-- (an id's scope is its SKU), as kind 'B' with the batch's fingerprint (its
-- items, in order), and logged to that shard's log. A resend with the same
-- items gets the first answer; the id with other items, or an item's SKU
-- where the id was used by another call (a Deduct, a Hold...), is refused
-- (MISMATCH) and takes nothing. The keys of one call may span shards: this
-- runs on a single Redis (not Redis Cluster).
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
local parts = {}
for i = 1, n do parts[i] = ARGV[3 * i + 1] .. '\n' .. ARGV[3 * i + 2] end
local fingerprint = redis.sha1hex(table.concat(parts, '\n'))

local function item(i)
  local b = 4 * (i - 1)
  local sku_id = ARGV[3 * i + 1]
  return {sku = KEYS[b + 1], users = KEYS[b + 2], log = KEYS[b + 3], so = KEYS[b + 4],
          sku_id = sku_id, qty = tonumber(ARGV[3 * i + 2]),
          store = records(ARGV[3 * i + 3], sku_id, now, ttl_ms)}
end

for i = 1, n do
  if not shard_ready(ARGV[3 * i + 3]) then return {'NO_SHARD', i} end
  if redis.call('EXISTS', item(i).sku) == 0 then return {'NO_SKU', i} end
end

-- Seen before? Either every item holds this batch's record, or none holds
-- any record under the id.
local seen = 0
for i = 1, n do
  local it = item(i)
  local rec = find_record(it.store, rid)
  if rec then
    if rec[1] ~= 'B' or rec[10] ~= fingerprint or rec[4] ~= user then return {'MISMATCH', i} end
    seen = seen + 1
  elseif seen > 0 then
    return {'MISMATCH', i}
  end
end
if seen > 0 and seen < n then return {'MISMATCH', 1} end
if seen == n then
  local out = {'DUP', n}
  for i = 1, n do
    local it = item(i)
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
  local _, avail, log_id = take(it.sku, it.users, it.log, nil, it.store, it.sku_id, user, it.qty, rid, 0, now,
                                fingerprint)
  announce(it.sku, it.so, it.sku_id, avail + it.qty, avail)
  out[4 * i] = avail
  out[4 * i + 1] = log_id
  out[4 * i + 2] = is_durable(it.sku)
end
return out
