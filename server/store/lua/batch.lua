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
-- ARGV[4*i .. 4*i + 3]   item i: sku_id, qty, key prefix, token ok (1: the
--                        node found the item's admission token valid)
--
-- After the resend check, each item's SKU that wants an admission token
-- must have a valid one, then each item counts as an attempt of the user on
-- its SKU (the per-user rate, ur): a refused batch's items count too.
--
-- Returns {code, n, then per item: item_code, stock_left, log_id, durable,
-- retry_after_ms (RATE_LIMITED: ms until the user's window ends, else 0)},
-- code one of
--   OK, DUP (the batch took effect before; items as recorded; log_id the
--   tail of the item's log), REFUSED (the first item refusal is the batch's
--   outcome), NO_SKU (n = the item's index), MISMATCH (likewise), TOKEN
--   (likewise: the item's SKU needs a valid admission token),
--   QTY_MAX ({code, index, cap}), NO_SHARD ({code, index}: rebuild first)
local user, rid, ttl_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n = (#ARGV - 3) / 4
local now = now_ms()
local parts = {}
for i = 1, n do parts[i] = ARGV[4 * i] .. '\n' .. ARGV[4 * i + 1] end
local fingerprint = redis.sha1hex(table.concat(parts, '\n'))

local function item(i)
  local b = 4 * (i - 1)
  local sku_id = ARGV[4 * i]
  return {sku = KEYS[b + 1], users = KEYS[b + 2], log = KEYS[b + 3], so = KEYS[b + 4],
          sku_id = sku_id, qty = tonumber(ARGV[4 * i + 1]), prefix = ARGV[4 * i + 2],
          token_ok = tonumber(ARGV[4 * i + 3]), store = records(ARGV[4 * i + 2], sku_id, now, ttl_ms)}
end

for i = 1, n do
  if not shard_ready(ARGV[4 * i + 2]) then return {'NO_SHARD', i} end
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
    out[#out + 1] = 0
  end
  return out
end

for i = 1, n do
  local it = item(i)
  if not token_admits(it.sku, it.token_ok) then return {'TOKEN', i} end
end

local out, refused = {'OK', n}, false
for i = 1, n do
  local it = item(i)
  local code, avail, wait = 'RATE_LIMITED', -1, rate_wait(it.prefix, it.sku, it.sku_id, user, now)
  if wait == 0 then code, avail = check_take(it.sku, it.users, user, it.qty, now) end
  if code == 'QTY_MAX' then return {'QTY_MAX', i, avail} end
  if code ~= 'OK' then refused = true end
  out[#out + 1] = code
  out[#out + 1] = avail
  out[#out + 1] = ''
  out[#out + 1] = 0
  out[#out + 1] = wait
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
  out[5 * i - 1] = avail
  out[5 * i] = log_id
  out[5 * i + 1] = is_durable(it.sku)
end
return out
