-- append: one batch of a leader's stream events; the stream outlives a dead leader by its TTL only.
-- KEYS: the flight's stream. ARGV: TTL (ms), then field, value pairs.
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return id
