-- adjust_sku.lua: add or take away stock, never below what is handed out;
-- or pause / resume the sale.
--
-- Each change goes to the shard log for the ledger with its absolute
-- result (A: the new total; Z: paused; U: resumed), so applying an entry
-- twice changes nothing.
--
-- KEYS[1] sku hash  KEYS[2] sold-out hash  KEYS[3] admin record of request_id
-- KEYS[4] shard log
-- ARGV[1] sku_id  ARGV[2] op: 'adjust' | 'pause' | 'resume'
-- ARGV[3] delta (adjust)  ARGV[4] admin ttl s
-- ARGV[5] key prefix of the shard ('fs:{s<n>}:')
-- ARGV[6] the most units a SKU may hold (flashstock.server.rpc.validate.MAX_STOCK)
-- ARGV[7] request_id (logged with the call's fingerprint: the ledger keeps
--         both, so a resend after a Redis loss still changes nothing)
-- ARGV[8] the audit note, JSON ('' = none; see add_audit in _lib.lua)
--
-- Returns {code, log_id, HGETALL of the sku hash...}, code one of
--   OK, DUP (applied before; nothing changed; log_id the log's tail), NO_SKU,
--   BELOW (the total would fall below held + confirmed; nothing changed),
--   ABOVE (the total would pass ARGV[6], the cap PutSku enforces; nothing changed),
--   MISMATCH (the request_id was applied before to another call),
--   NO_SHARD (the shard's state is missing: rebuild it, then send again)
local function answer(code, log_id)
  local out = {code, log_id or ''}
  for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
  return out
end
if not shard_ready(ARGV[5]) then return {'NO_SHARD'} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {'NO_SKU'} end
local op = ARGV[2]
local fingerprint = redis.sha1hex(table.concat({op, ARGV[1], op == 'adjust' and ARGV[3] or ''}, '\0'))
local seen = redis.call('GET', KEYS[3])
if seen and seen ~= fingerprint then return {'MISMATCH'} end
if seen then return answer('DUP', log_tail(KEYS[4])) end
local log_id
local before = redis.call('HGETALL', KEYS[1])
if op == 'adjust' then
  local delta = tonumber(ARGV[3])
  local s = redis.call('HMGET', KEYS[1], 'total', 'avail', 'held', 'conf')
  local total, was = tonumber(s[1]), tonumber(s[2])
  if total + delta < tonumber(s[3]) + tonumber(s[4]) then return answer('BELOW') end
  -- The total is only known here: PutSku's cap, checked where it can be.
  if total + delta > tonumber(ARGV[6]) then return answer('ABOVE') end
  -- ARGV[3] as sent (a decimal integer): never a Lua number formatted as a float.
  local new_total = redis.call('HINCRBY', KEYS[1], 'total', ARGV[3])
  local avail = redis.call('HINCRBY', KEYS[1], 'avail', ARGV[3])
  announce(KEYS[1], KEYS[2], ARGV[1], was, avail, true)
  local entry = {'t', 'A', 'k', ARGV[1], 'q', new_total, 'r', ARGV[7], 'f', fingerprint}
  log_id = redis.call('XADD', KEYS[4], '*', unpack(add_audit(entry, ARGV[8], before, KEYS[1])))
else
  redis.call('HSET', KEYS[1], 'paused', op == 'pause' and 1 or 0)
  local entry = {'t', op == 'pause' and 'Z' or 'U', 'k', ARGV[1], 'r', ARGV[7], 'f', fingerprint}
  log_id = redis.call('XADD', KEYS[4], '*', unpack(add_audit(entry, ARGV[8], before, KEYS[1])))
end
redis.call('SET', KEYS[3], fingerprint, 'EX', tonumber(ARGV[4]))
return answer('OK', log_id)
