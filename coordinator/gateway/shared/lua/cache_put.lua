-- cache_put: store a finished reply for every gateway, bounded in bytes; expired and then oldest entries go first.
-- KEYS: the entry, the index (sorted set: key -> expiry ms), the sizes (hash: key -> bytes), the byte total.
-- ARGV: the entry's member name, the reply, TTL (ms), the byte bound, the entries' key prefix.
-- 1: stored | 0: the reply alone is past the bound.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local INDEX, SIZES, TOTAL = KEYS[2], KEYS[3], KEYS[4]
local function forget(member)
  local size = redis.call('HGET', SIZES, member)
  if size then
    redis.call('DECRBY', TOTAL, size)
    redis.call('HDEL', SIZES, member)
  end
  redis.call('ZREM', INDEX, member)
end
for _, member in ipairs(redis.call('ZRANGEBYSCORE', INDEX, '-inf', now, 'LIMIT', 0, 64)) do
  forget(member)
end
local size, bound = string.len(ARGV[2]), tonumber(ARGV[4])
if size > bound then return 0 end
forget(ARGV[1])
while tonumber(redis.call('GET', TOTAL) or '0') + size > bound do
  local oldest = redis.call('ZRANGE', INDEX, 0, 0)[1]
  if not oldest then break end
  redis.call('DEL', ARGV[5] .. oldest)
  forget(oldest)
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', INDEX, now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', SIZES, ARGV[1], size)
redis.call('INCRBY', TOTAL, size)
return 1
