-- put_sku.lua: define a SKU, or define it again and restart its sale.
--
-- Counters and per-user counts start from zero; holds of the previous sale
-- give their units back to nobody (their `sale` no longer matches). The
-- definition goes to the shard log (event P, absolute values, so applying
-- it twice changes nothing) for the ledger, with the request id and the
-- call's fingerprint: the ledger keeps them, so a rebuild brings the admin
-- record back and a resend after a Redis loss still changes nothing.
--
-- KEYS[1] sku hash  KEYS[2] users hash  KEYS[3] sold-out hash
-- KEYS[4] admin record of request_id  KEYS[5] shard log
-- KEYS[6] sale totals  KEYS[7] visitors HLL  KEYS[8] buyers HLL (a new sale's figures start from nothing)
-- ARGV[1] sku_id  ARGV[2] stock  ARGV[3] per-user limit  ARGV[4] max per request
-- ARGV[5] sale start ms  ARGV[6] sale end ms  ARGV[7] mode  ARGV[8] admin ttl s
-- ARGV[9] key prefix of the shard ('fs:{s<n>}:')   ARGV[10] request_id
-- ARGV[11] goal units  ARGV[12] goal sell-out ms  ARGV[13] goal buyers
-- ARGV[14] unit price in minor units  ARGV[15] currency ('' = no price)
-- ARGV[16] attempts per user per second (0 = no cap)  ARGV[17] require admission token ('1' / '0')
-- ARGV[#ARGV] (always the last) the audit note, JSON ('' = none; see add_audit in _lib.lua)
--
-- Returns {code, log_id, HGETALL of the sku hash...}, code one of
--   OK, DUP (applied before; nothing changed; log_id the log's tail),
--   MISMATCH (the request_id was applied before to another call),
--   NO_SHARD (the shard's state is missing: rebuild it, then send again)
if not shard_ready(ARGV[9]) then return {'NO_SHARD'} end
local call = {'put', ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]}
-- Goals and price join the fingerprint only when given, so a put without
-- them keeps the fingerprint it had before they existed (its resends match).
if ARGV[11] ~= '0' or ARGV[12] ~= '0' or ARGV[13] ~= '0' or ARGV[14] ~= '0' or ARGV[15] ~= '' then
  for i = 11, 15 do call[#call + 1] = ARGV[i] end
end
-- Likewise the anti-scalping settings (appended after the goals: those take
-- their place in the fingerprint as before).
if ARGV[16] ~= '0' or ARGV[17] ~= '0' then
  call[#call + 1] = 'scalp'
  call[#call + 1] = ARGV[16]
  call[#call + 1] = ARGV[17]
end
local fingerprint = redis.sha1hex(table.concat(call, '\0'))
local seen = redis.call('GET', KEYS[4])
if seen and seen ~= fingerprint then return {'MISMATCH'} end
local function answer(code, log_id)
  local out = {code, log_id}
  for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
  return out
end
if seen then return answer('DUP', log_tail(KEYS[5])) end

local old = redis.call('HMGET', KEYS[1], 'sv', 'sale')
local before = redis.call('HGETALL', KEYS[1])
local stock = tonumber(ARGV[2])
local sale = string.format('%d', tonumber(old[2] or '0') + 1)
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('DEL', KEYS[6], KEYS[7], KEYS[8])
-- Numbers are written as the decimal strings they came as (ARGV, the old
-- hash) or formatted with %d: never a Lua number, which Redis would write
-- as a float ('1e+17') past 17 digits.
redis.call('HSET', KEYS[1], 'avail', ARGV[2], 'total', ARGV[2], 'held', 0, 'conf', 0,
           'lim', ARGV[3], 'maxq', ARGV[4], 'start', ARGV[5], 'end', ARGV[6],
           'paused', 0, 'mode', ARGV[7], 'sv', old[1] or '0', 'sale', sale,
           'gu', ARGV[11], 'gs', ARGV[12], 'gb', ARGV[13], 'pr', ARGV[14], 'cur', ARGV[15])
redis.call('HSET', KEYS[1], 'ur', ARGV[16], 'rt', ARGV[17])
announce(KEYS[1], KEYS[3], ARGV[1], stock, stock, true)
local entry = {'t', 'P', 'k', ARGV[1], 'q', ARGV[2], 'lim', ARGV[3],
               'maxq', ARGV[4], 'start', ARGV[5], 'end', ARGV[6], 'mode', ARGV[7], 's', sale,
               'r', ARGV[10], 'f', fingerprint, 'gu', ARGV[11], 'gs', ARGV[12], 'gb', ARGV[13],
               'pr', ARGV[14], 'cur', ARGV[15], 'ur', ARGV[16], 'rt', ARGV[17]}
local log_id = redis.call('XADD', KEYS[5], '*', unpack(add_audit(entry, ARGV[#ARGV], before, KEYS[1])))
redis.call('SET', KEYS[4], fingerprint, 'EX', tonumber(ARGV[8]))
return answer('OK', log_id)
