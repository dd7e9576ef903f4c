-- bind.lua: bind the settings every node on this Redis must share; reply with the bound ones.
--
-- The first node on a Redis (or the first after it lost everything) writes
-- its values; every other node gets the bound values back and compares
-- them with its own, refusing to start (or to go on) on a difference. A
-- setting missing from the binding (bound by an older flashstock) is
-- added; a bound value is never overwritten. One script: two nodes
-- starting at once cannot both bind.
--
-- KEYS[1] the binding hash (fs:config)
-- ARGV[1] a setting's name   ARGV[2] its value   (ARGV[3], ARGV[4]: the next pair; and so on)
--
-- Returns {created, name, value, name, value, ...}: created is 1 when this
-- call made the binding (the hash was absent), else 0; then the whole hash.
local created = redis.call('EXISTS', KEYS[1]) == 0 and 1 or 0
for i = 1, #ARGV, 2 do
  redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
end
local reply = {created}
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do reply[#reply + 1] = v end
return reply
