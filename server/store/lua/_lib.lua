-- _lib.lua: helpers shared by every flashstock script.
--
-- Prepended to each script's source when it is loaded (server/store/scripts.py),
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
--   gu gs gb                the sale's goals: units, sell-out ms, distinct
--                           buyers (0 = none); read by the board
--   pr cur                  unit price in minor units (0 = none), ISO 4217
--                           currency ('' = none)
--   ur                      attempts one user may make per second (0 = no cap;
--                           absent in a hash put before it existed: no cap)
--   rt                      1: Deduct/Hold need an admission token (absent = 0)
--
-- Attempt counts of the per-user rate: hashes fs:{s<n>}:rl:<sec>:<sku>, field
-- user -> attempts in that second of Redis's clock (sec = floor(now_ms /
-- 1000)), expiring a second after their second ends. Every node counts in
-- the same hash, so the cap holds across nodes.
--
-- Records: the first answer of every call that took effect, per SKU: a
-- request id has one scope, (sku_id, request_id), everywhere (Redis, the
-- ledger's key, the rebuild, the reports), so an order id can key every line
-- of an order. Kept in generation buckets, hashes fs:{s<n>}:r:<gen>:<sku>
-- (gen = floor(now_ms / ttl_ms)) with field request_id. A bucket expires at
-- the end of the generation after its own, so a record lives between ttl and
-- 2 x ttl; a lookup reads the current and the previous bucket. One hash field
-- costs far less memory than a key with its own expiry, and the ids that took
-- a SKU's units are the fields of its buckets (what a node loads once the SKU
-- sells out, so it can still answer their resends). A record is a msgpack
-- array:
--   units taken (kind 'D' Deduct, 'H' Hold, 'B' a BatchDeduct item):
--     {kind, state 'C'|'H'|'R'|'X', qty, user, sku, taken_ms, exp_ms,
--      closer request_id ('' until confirmed or released), sale,
--      batch fingerprint ('' unless kind 'B')}
--   a Confirm or Release that took effect (kind 'C' | 'R'): {kind, hold_id}
-- An id is used by one call only: the same id with another kind or other
-- arguments is refused (MISMATCH), never answered as a duplicate.
--
-- Open holds are members '<sku>\n<hold_id>' of the shard's expiry set
-- fs:{s<n>}:hx ('\n' cannot occur in an id: the node refuses control
-- characters).
--
-- The shard meta's state is READY once the shard is whole in the current
-- record layout; a shard in any other state (missing, 'building', or
-- 'ready' of the layout before per-SKU records) is rebuilt from the ledger.

local SOLD_OUT_CHANNEL = 'fs:soldout'  -- flashstock.lockmgr.SOLD_OUT_CHANNEL
local READY = 'ready:2'                -- flashstock.lockmgr.SHARD_READY

local function now_ms()
  -- Redis's clock decides windows and expiries, so every node agrees.
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The record store of one SKU at one moment.
local function records(prefix, sku_id, now, ttl_ms)
  local gen = math.floor(now / ttl_ms)
  return {cur = prefix .. 'r:' .. gen .. ':' .. sku_id, prev = prefix .. 'r:' .. (gen - 1) .. ':' .. sku_id,
          expire_at = (gen + 2) * ttl_ms}
end

-- The record of `rid` and the bucket holding it, or nil.
local function find_record(store, rid)
  local raw = redis.call('HGET', store.cur, rid)
  if raw then return cmsgpack.unpack(raw), store.cur end
  raw = redis.call('HGET', store.prev, rid)
  if raw then return cmsgpack.unpack(raw), store.prev end
  return nil, nil
end

local function add_record(store, rid, rec)
  redis.call('HSET', store.cur, rid, cmsgpack.pack(rec))
  redis.call('PEXPIREAT', store.cur, store.expire_at)
end

-- The member of a hold in the shard's expiry set.
local function hold_member(sku_id, hold_id)
  return sku_id .. '\n' .. hold_id
end

local function update_record(bucket, rid, rec)
  redis.call('HSET', bucket, rid, cmsgpack.pack(rec))
end

-- The reply of every call about a deduction:
-- {code, stock_left, sold_out_sv, kind, state, qty, user, sku, taken_ms, exp_ms,
--  log_id, durable}: log_id is the log entry the answer rests on ('' = none),
-- durable 1 when the SKU is in durable mode (the node then waits until the
-- ledger holds log_id before it replies).
local function reply(code, left, sv, rec, log_id, durable)
  if rec then
    return {code, left, sv, rec[1], rec[2], rec[3], rec[4], rec[5], rec[6], rec[7], log_id or '', durable or 0}
  end
  return {code, left, sv}
end

local function is_durable(sku_key)
  return redis.call('HGET', sku_key, 'mode') == 'durable' and 1 or 0
end

-- The outbox: a change and its log entry are written by the same script.
-- Every entry has the same fields (streams store them once per block):
-- t event (D deduct, H hold, C confirm, R release, X expire), r request id,
-- k sku, u user, q qty, e hold expiry ms, s sale, c confirm/release id,
-- w when the units were taken (the record's taken_ms: the entry id's ms may
-- be a later one, and a retry after a rebuild must get the first answer),
-- b the batch fingerprint of a BatchDeduct item ('' otherwise).
-- Returns the entry's id.
local function log_event(log_key, event, rid, rec)
  return redis.call('XADD', log_key, '*', 't', event, 'r', rid, 'k', rec[5],
                    'u', rec[4], 'q', rec[3], 'e', rec[7], 's', rec[9], 'c', rec[8], 'w', rec[6],
                    'b', rec[10] or '')
end

-- The last entry id of a log, or '0-0'.
local function log_tail(log_key)
  local last = redis.call('XREVRANGE', log_key, '+', '-', 'COUNT', 1)
  if #last == 0 then return '0-0' end
  return last[1][1]
end

-- Is the shard's state in Redis whole? Missing after a restart or flush,
-- 'building' during a rebuild: either way, the node rebuilds it from the
-- ledger before serving it (server/duties/rebuild.py).
local function shard_ready(prefix)
  return redis.call('HGET', prefix .. 'm', 'state') == READY
end

-- The fencing check of every duty write (reaper, persister, warden): false
-- when the shard's meta holds a higher owner epoch than `epoch` (a newer
-- owner exists: refuse, write nothing); else the stored epoch is raised to
-- `epoch`, so an older owner is refused from now on. '' = not a duty write.
local function epoch_ok(prefix, epoch)
  if epoch == nil or epoch == '' then return true end
  epoch = tonumber(epoch)
  local stored = tonumber(redis.call('HGET', prefix .. 'm', 'epoch') or '0')
  if epoch < stored then return false end
  if epoch > stored then redis.call('HSET', prefix .. 'm', 'epoch', epoch) end
  return true
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

-- Admission token: the node checked the call's token (CPU only) and says
-- whether it was valid (`token_ok` 1); a SKU with rt = 1 refuses any other.
-- Returns true when the attempt may go on.
local function token_admits(sku_key, token_ok)
  return token_ok == 1 or redis.call('HGET', sku_key, 'rt') ~= '1'
end

-- Count an attempt of `user` on the SKU against its per-user rate (ur).
-- Returns 0 when the attempt may go on, else the ms until the user's window
-- ends (at least 1): the attempt is refused, RATE_LIMITED.
local function rate_wait(prefix, sku_key, sku_id, user, now)
  local rate = tonumber(redis.call('HGET', sku_key, 'ur') or '0')
  if rate <= 0 then return 0 end
  local sec = math.floor(now / 1000)
  local key = prefix .. 'rl:' .. sec .. ':' .. sku_id
  local n = redis.call('HINCRBY', key, user, 1)
  redis.call('PEXPIREAT', key, (sec + 2) * 1000)
  if n > rate then return (sec + 1) * 1000 - now end
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

-- Take the units a check_take allowed; returns the record, avail after and
-- the log entry's id. `batch_fp`: the fingerprint of the BatchDeduct this
-- item belongs to (nil for a Deduct or Hold).
local function take(sku_key, users_key, log_key, hx_key, store, sku_id, user, qty, rid, hold_ms, now, batch_fp)
  local avail = redis.call('HINCRBY', sku_key, 'avail', -qty)
  local kind, state, exp = 'D', 'C', 0
  if hold_ms > 0 then
    kind, state, exp = 'H', 'H', now + hold_ms
    redis.call('HINCRBY', sku_key, 'held', qty)
    redis.call('ZADD', hx_key, exp, hold_member(sku_id, rid))
  else
    redis.call('HINCRBY', sku_key, 'conf', qty)
    if batch_fp then kind = 'B' end
  end
  if redis.call('HGET', sku_key, 'lim') ~= '0' then
    redis.call('HINCRBY', users_key, user, qty)
  end
  local sale = tonumber(redis.call('HGET', sku_key, 'sale'))
  local rec = {kind, state, qty, user, sku_id, now, exp, '', sale, batch_fp or ''}
  add_record(store, rid, rec)
  return rec, avail, log_event(log_key, kind, rid, rec)
end

-- Give a hold's units back (release or expiry) and mark it `state`.
-- Returns avail after, or -1 when the hold belongs to an older sale.
local function give_back(prefix, bucket, hold_id, rec, state, closer)
  local sku_key = prefix .. 'k:' .. rec[5]
  rec[2], rec[8] = state, closer
  update_record(bucket, hold_id, rec)
  redis.call('ZREM', prefix .. 'hx', hold_member(rec[5], hold_id))
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

-- The audit trail: an admin change's log entry carries the servicer's note
-- (who, from where, the method and its arguments: JSON, '' = none) and the
-- SKU's hash before (`before`, an HGETALL read by the script before it
-- wrote) and after (read now: call it once every write is made), so the
-- ledger writes the audit row with the change, in one transaction.
-- Appends fields au, ab, aa to `entry` (an XADD's field list) when there is a note.
local function add_audit(entry, note, before, sku_key)
  if note == nil or note == '' then return entry end
  entry[#entry + 1] = 'au'
  entry[#entry + 1] = note
  entry[#entry + 1] = 'ab'
  entry[#entry + 1] = cjson.encode(before)
  entry[#entry + 1] = 'aa'
  entry[#entry + 1] = cjson.encode(redis.call('HGETALL', sku_key))
  return entry
end
