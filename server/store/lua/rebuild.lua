-- rebuild.lua: install a shard's state from the ledger, in steps, fenced.
--
-- A rebuilder holds the shard's rebuild mutex (python-redis-lock, key
-- 'lock:rebuild:{s<n>}'); every step first checks that the mutex still holds
-- its token and that the shard's generation is still the one it is
-- installing, so a rebuilder paused past the mutex's expiry cannot overwrite
-- a newer rebuild. Requests see the shard as missing until 'commit'.
--
-- KEYS[1] shard meta hash   KEYS[2] the rebuild mutex key
-- ARGV[1] step: 'begin' | 'sku' | 'users' | 'records' | 'settles' | 'admin' | 'commit'
-- ARGV[2] mutex token   ARGV[3] generation being installed
-- ARGV[4] key prefix of the shard ('fs:{s<n>}:')   ARGV[5] record ttl ms
-- begin:   ARGV[6] the generation read before loading the ledger ('' = none)
--          ARGV[7] the ledger's persister cursor of the shard ('0-0' = none):
--          the new log starts after it, so the persister reads on from there
--          ARGV[8] the ledger's highest owner epoch of the shard: a Redis that
--          lost the shard's meta fences off older owners again
--          ARGV[9] the rebuilding owner's epoch ('' = a request's rebuild)
-- sku:     ARGV[6] JSON {sku, total, held, conf, lim, maxq, start, end,
--                        paused, mode, sale, gu, gs, gb, pr, cur, ur, rt,
--                        users = {user = units}} (goals, price, ur, rt: absent = none)
-- users:   ARGV[6] JSON {sku, users = {user = units}} (more per-user counts)
-- records: ARGV[6] JSON [[request_id, kind, state letter, qty, user, sku,
--                         taken_ms, exp_ms, closer, sale, batch fingerprint], ...]
-- settles: ARGV[6] JSON [[sku, request_id, 'C' | 'R', hold_id, at_ms], ...]:
--          the Confirm/Release calls that took effect, recorded under their ids
-- admin:   ARGV[6] JSON [[sku, request_id, fingerprint, applied_ms], ...]: the
--          admin calls applied within the retry window, so a resend changes nothing
--
-- Returns 'OK', 'STALE' (the mutex is not ours any more, or another
-- generation is in place: nothing was written) or 'FENCED' (begin: a newer
-- owner's epoch is stored: only the ledger's epoch was taken back).
local step, token, gen, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
-- cjson.decode makes every number a double, which Redis would write as a
-- float ('1e+17') past 17 digits: counters and times go to Redis as %d.
local function int(n) return string.format('%d', n) end
local ttl_ms = tonumber(ARGV[5])
if redis.call('GET', KEYS[2]) ~= token then return 'STALE' end
local now = now_ms()

if step == 'begin' then
  local current = redis.call('HGET', KEYS[1], 'gen') or ''
  if current ~= ARGV[6] then return 'STALE' end
  if tonumber(ARGV[8]) > tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0') then
    redis.call('HSET', KEYS[1], 'epoch', ARGV[8])
  end
  if not epoch_ok(prefix, ARGV[9]) then return 'FENCED' end
  -- A clean slate: whatever is left of the shard is older than the ledger
  -- (each SKU's records go in its 'sku' step). The log goes too: the
  -- persister starts the new generation's log at 0-0.
  redis.call('DEL', prefix .. 'hx', prefix .. 'so', prefix .. 'log', prefix .. 'pc')
  if ARGV[7] ~= '0-0' then
    -- A marker entry just after the persisted cursor: every new entry's id
    -- is above it, whatever the clock of the new Redis says.
    local ms, seq = string.match(ARGV[7], '^(%d+)-(%d+)$')
    redis.call('XADD', prefix .. 'log', ms .. '-' .. (tonumber(seq) + 1), 't', 'G', 'q', gen)
  end
  redis.call('HSET', KEYS[1], 'gen', gen, 'state', 'building')
  return 'OK'
end

if redis.call('HGET', KEYS[1], 'gen') ~= gen or redis.call('HGET', KEYS[1], 'state') ~= 'building' then
  return 'STALE'
end

if step == 'sku' then
  local s = cjson.decode(ARGV[6])
  local sku_key, users_key = prefix .. 'k:' .. s.sku, prefix .. 'u:' .. s.sku
  local avail = s.total - s.held - s.conf
  local store = records(prefix, s.sku, now, ttl_ms)
  redis.call('DEL', sku_key, users_key, store.cur, store.prev)
  -- A stock version newer than any announced before the loss.
  redis.call('HSET', sku_key, 'avail', int(avail), 'total', int(s.total), 'held', int(s.held), 'conf', int(s.conf),
             'lim', int(s.lim), 'maxq', int(s.maxq), 'start', int(s.start), 'end', int(s['end']),
             'paused', int(s.paused), 'mode', s.mode, 'sv', int(now), 'sale', int(s.sale),
             'gu', int(s.gu or 0), 'gs', int(s.gs or 0), 'gb', int(s.gb or 0), 'pr', int(s.pr or 0),
             'cur', s.cur or '', 'ur', int(s.ur or 0), 'rt', int(s.rt or 0))
  for user, units in pairs(s.users) do redis.call('HSET', users_key, user, int(units)) end
  announce(sku_key, prefix .. 'so', s.sku, avail, avail, true)
  return 'OK'
end

if step == 'users' then
  local s = cjson.decode(ARGV[6])
  for user, units in pairs(s.users) do redis.call('HSET', prefix .. 'u:' .. s.sku, user, int(units)) end
  return 'OK'
end

-- A record in the bucket of the generation it was made in.
local function restore(sku_id, rid, at_ms, rec)
  local g = math.floor(at_ms / ttl_ms)
  local bucket = prefix .. 'r:' .. g .. ':' .. sku_id
  redis.call('HSET', bucket, rid, cmsgpack.pack(rec))
  redis.call('PEXPIREAT', bucket, (g + 2) * ttl_ms)
end

if step == 'records' then
  for _, r in ipairs(cjson.decode(ARGV[6])) do
    restore(r[6], r[1], r[7], {r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11]})
    if r[3] == 'H' then redis.call('ZADD', prefix .. 'hx', r[8], hold_member(r[6], r[1])) end
  end
  return 'OK'
end

if step == 'admin' then
  for _, r in ipairs(cjson.decode(ARGV[6])) do
    -- The key of ShardKeys.admin_record; it lives request ttl from when the call was applied.
    local left = r[4] + ttl_ms - now
    if left > 0 then
      redis.call('SET', prefix .. 'a:' .. #r[1] .. ':' .. r[1] .. ':' .. r[2], r[3], 'PX', string.format('%d', left))
    end
  end
  return 'OK'
end

if step == 'settles' then
  for _, r in ipairs(cjson.decode(ARGV[6])) do restore(r[1], r[2], r[5], {r[3], r[4]}) end
  return 'OK'
end

if step == 'commit' then
  redis.call('HSET', KEYS[1], 'state', READY)
  return 'OK'
end
return redis.error_reply('rebuild.lua: unknown step ' .. tostring(step))
