-- adjust_sku.lua: add or take away stock, never below what is handed out;
-- or pause / resume the sale.
--
-- KEYS[1] sku hash  KEYS[2] sold-out hash  KEYS[3] admin record of request_id
-- KEYS[4] shard log
-- ARGV[1] sku_id  ARGV[2] op: 'adjust' | 'pause' | 'resume'
-- ARGV[3] delta (adjust)  ARGV[4] admin ttl s
--
-- Returns {code, HGETALL of the sku hash...}, code one of
--   OK, DUP (applied before; nothing changed), NO_SKU,
--   BELOW (the total would fall below held + confirmed; nothing changed),
--   MISMATCH (the request_id was applied before to another call)
local function answer(code)
  local out = {code}
  for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
  return out
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {'NO_SKU'} end
local op = ARGV[2]
local fingerprint = table.concat({op, ARGV[1], op == 'adjust' and ARGV[3] or ''}, '\0')
local seen = redis.call('GET', KEYS[3])
if seen and seen ~= fingerprint then return {'MISMATCH'} end
if seen then return answer('DUP') end
if op == 'adjust' then
  local delta = tonumber(ARGV[3])
  local s = redis.call('HMGET', KEYS[1], 'total', 'avail', 'held', 'conf')
  local total, was = tonumber(s[1]), tonumber(s[2])
  if total + delta < tonumber(s[3]) + tonumber(s[4]) then return answer('BELOW') end
  redis.call('HINCRBY', KEYS[1], 'total', delta)
  local avail = redis.call('HINCRBY', KEYS[1], 'avail', delta)
  announce(KEYS[1], KEYS[2], ARGV[1], was, avail, true)
  redis.call('XADD', KEYS[4], '*', 't', 'A', 'r', '', 'k', ARGV[1], 'u', '', 'q', delta, 'e', 0)
else
  redis.call('HSET', KEYS[1], 'paused', op == 'pause' and 1 or 0)
end
redis.call('SET', KEYS[3], fingerprint, 'EX', tonumber(ARGV[4]))
return answer('OK')
