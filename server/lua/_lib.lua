-- _lib.lua: helpers shared by every flashstock script.
--
-- Prepended to each script's source when it is loaded (server/_scripts.py),
-- so each script is still one SCRIPT LOAD and one EVALSHA. Nothing here runs
-- on its own.
--
-- A SKU hash (fs:{s<n>}:k:<sku>) holds:
--   avail total held conf   units left, put, held, sold for good
--   lim maxq                per-user limit and per-request cap (0 = none)
--   start end               sale window, unix ms on Redis's clock (0 = open)
--   paused mode             0/1, 'fast'/'durable'
--   sv                      stock version: +1 on every put, adjust and
--                           sold-out/available flip; orders announcements
--   sale                    +1 on every put; holds of an older sale give
--                           their units back to nobody
--
-- A record (fs:{s<n>}:r:<request_id>) is a msgpack array:
--   {kind 'D'|'H', state 'C'|'H'|'R'|'X', qty, user, sku, taken_ms, exp_ms,
--    closer request_id ('' until confirmed or released), sale}

local SOLD_OUT_CHANNEL = 'fs:soldout'  -- flashstock.lockmgr.SOLD_OUT_CHANNEL

local function now_ms()
  -- Redis's clock decides windows and expiries, so every node agrees.
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function load_record(key)
  local raw = redis.call('GET', key)
  if not raw then return nil end
  return cmsgpack.unpack(raw)
end

local function save_record(key, rec, ttl_s)
  if ttl_s then
    redis.call('SET', key, cmsgpack.pack(rec), 'EX', ttl_s)
  else
    -- A state change keeps the record's original expiry.
    redis.call('SET', key, cmsgpack.pack(rec), 'KEEPTTL')
  end
end

-- The reply of every call about a deduction:
-- {code, stock_left, sold_out_sv, kind, state, qty, user, sku, taken_ms, exp_ms}
local function reply(code, left, sv, rec)
  if rec then
    return {code, left, sv, rec[1], rec[2], rec[3], rec[4], rec[5], rec[6], rec[7]}
  end
  return {code, left, sv}
end

local function log_event(log_key, event, rid, rec)
  -- The outbox: the change and its log entry are written by the same script.
  redis.call('XADD', log_key, '*', 't', event, 'r', rid, 'k', rec[5],
             'u', rec[4], 'q', rec[3], 'e', rec[7])
end

-- After avail changed: keep the sold-out hash and the nodes' memory in step.
-- Announces a flip between sold out and available (or, with `force`, the
-- current state after a put or adjust) under a new stock version.
-- Returns the sv of a sell-out, else 0.
local function announce(sku_key, so_key, sku_id, was_avail, avail, force)
  local sold_out = avail <= 0
  if not force and (was_avail <= 0) == sold_out then return 0 end
  local sv = redis.call('HINCRBY', sku_key, 'sv', 1)
  if sold_out then
    redis.call('HSET', so_key, sku_id, sv)
    redis.call('PUBLISH', SOLD_OUT_CHANNEL, 'S ' .. sv .. ' ' .. sku_id)
    return sv
  end
  redis.call('HDEL', so_key, sku_id)
  redis.call('PUBLISH', SOLD_OUT_CHANNEL, 'A ' .. sv .. ' ' .. sku_id)
  return 0
end

-- Can `user` take `qty` of the SKU now? Returns code, avail, sold_out_sv.
local function check_take(sku_key, users_key, user, qty, now)
  local s = redis.call('HMGET', sku_key, 'avail', 'lim', 'maxq', 'start', 'end', 'paused', 'sv')
  local avail, lim, maxq = tonumber(s[1]), tonumber(s[2]), tonumber(s[3])
  local start, stop = tonumber(s[4]), tonumber(s[5])
  if maxq == 0 then maxq = lim end
  if maxq > 0 and qty > maxq then return 'QTY_MAX', maxq, 0 end
  if s[6] == '1' or (start > 0 and now < start) or (stop > 0 and now >= stop) then
    return 'NOT_ON_SALE', avail, 0
  end
  if avail <= 0 then return 'SOLD_OUT', 0, tonumber(s[7]) end
  if lim > 0 then
    local have = tonumber(redis.call('HGET', users_key, user) or '0')
    if have + qty > lim then return 'LIMIT', avail, 0 end
  end
  if avail < qty then return 'INSUFFICIENT', avail, 0 end
  return 'OK', avail, 0
end

-- Take the units a check_take allowed; returns the record and avail after.
local function take(keys, sku_id, user, qty, rid, hold_ms, ttl_s, now)
  local sku_key, users_key, rec_key, log_key, hx_key = keys[1], keys[2], keys[3], keys[4], keys[5]
  local avail = redis.call('HINCRBY', sku_key, 'avail', -qty)
  local kind, state, exp = 'D', 'C', 0
  if hold_ms > 0 then
    kind, state, exp = 'H', 'H', now + hold_ms
    redis.call('HINCRBY', sku_key, 'held', qty)
    redis.call('ZADD', hx_key, exp, rid)
  else
    redis.call('HINCRBY', sku_key, 'conf', qty)
  end
  if redis.call('HGET', sku_key, 'lim') ~= '0' then
    redis.call('HINCRBY', users_key, user, qty)
  end
  local sale = tonumber(redis.call('HGET', sku_key, 'sale'))
  local rec = {kind, state, qty, user, sku_id, now, exp, '', sale}
  save_record(rec_key, rec, ttl_s)
  log_event(log_key, kind, rid, rec)
  return rec, avail
end

-- Give a hold's units back (release or expiry) and mark it `state`.
-- Returns avail after, or -1 when the hold belongs to an older sale.
local function give_back(prefix, rec_key, rec, state, closer)
  local sku_key = prefix .. 'k:' .. rec[5]
  rec[2], rec[8] = state, closer
  save_record(rec_key, rec, nil)
  redis.call('ZREM', prefix .. 'hx', string.sub(rec_key, #prefix + 3))
  local left = -1
  if tonumber(redis.call('HGET', sku_key, 'sale') or '-1') == rec[9] then
    local qty = rec[3]
    local was = tonumber(redis.call('HGET', sku_key, 'avail'))
    left = redis.call('HINCRBY', sku_key, 'avail', qty)
    redis.call('HINCRBY', sku_key, 'held', -qty)
    if redis.call('HGET', sku_key, 'lim') ~= '0' then
      redis.call('HINCRBY', prefix .. 'u:' .. rec[5], rec[4], -qty)
    end
    announce(sku_key, prefix .. 'so', rec[5], was, left)
  end
  return left
end
