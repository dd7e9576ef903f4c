-- put_sku.lua: define a SKU, or define it again and restart its sale.
--
-- Counters and per-user counts start from zero; holds of the previous sale
-- give their units back to nobody (their `sale` no longer matches).
--
-- KEYS[1] sku hash  KEYS[2] users hash  KEYS[3] sold-out hash
-- KEYS[4] admin record of request_id  KEYS[5] shard log
-- ARGV[1] sku_id  ARGV[2] stock  ARGV[3] per-user limit  ARGV[4] max per request
-- ARGV[5] sale start ms  ARGV[6] sale end ms  ARGV[7] mode  ARGV[8] admin ttl s
--
-- Returns {code, HGETALL of the sku hash...}, code one of
--   OK, DUP (applied before; nothing changed),
--   MISMATCH (the request_id was applied before to another call)
local fingerprint = table.concat({'put', ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]}, '\0')
local seen = redis.call('GET', KEYS[4])
if seen and seen ~= fingerprint then return {'MISMATCH'} end
if seen then
  local out = {'DUP'}
  for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
  return out
end
local old = redis.call('HMGET', KEYS[1], 'sv', 'sale')
local stock = tonumber(ARGV[2])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'avail', stock, 'total', stock, 'held', 0, 'conf', 0,
           'lim', ARGV[3], 'maxq', ARGV[4], 'start', ARGV[5], 'end', ARGV[6],
           'paused', 0, 'mode', ARGV[7], 'sv', tonumber(old[1] or '0'),
           'sale', tonumber(old[2] or '0') + 1)
announce(KEYS[1], KEYS[3], ARGV[1], stock, stock, true)
redis.call('XADD', KEYS[5], '*', 't', 'P', 'r', '', 'k', ARGV[1], 'u', '', 'q', stock, 'e', 0)
redis.call('SET', KEYS[4], fingerprint, 'EX', tonumber(ARGV[8]))
local out = {'OK'}
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
return out
