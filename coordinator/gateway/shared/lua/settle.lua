-- settle: a held call ended: drop its reservation and add what it really cost.
-- KEYS: the fleet's spend hash, [the task's spend hash]. ARGV: estimate USD, estimate tokens, USD spent,
-- tokens spent, the generation the hold was made in (a task reset since holds nothing of it any more).
local function drop(key, field, amount)
  local left = tonumber(redis.call('HINCRBYFLOAT', key, field, '-' .. amount))
  if left < 0 then redis.call('HSET', key, field, 0) end
end
drop(KEYS[1], 'rusd', ARGV[1])
redis.call('HINCRBYFLOAT', KEYS[1], 'usd', ARGV[3])
if KEYS[2] then
  if tonumber(redis.call('HGET', KEYS[2], 'g') or '0') == tonumber(ARGV[5]) then
    drop(KEYS[2], 'rusd', ARGV[1])
    drop(KEYS[2], 'rtok', ARGV[2])
  end
  redis.call('HINCRBYFLOAT', KEYS[2], 'usd', ARGV[3])
  redis.call('HINCRBYFLOAT', KEYS[2], 'tok', ARGV[4])
end
return 1
