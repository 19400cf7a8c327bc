-- renew: the leader keeps its lock (and its stream) while its call runs.
-- KEYS: the lock, the flight's stream. ARGV: flight id, lease (ms), stream TTL (ms).
-- 1: renewed | 0: the lock is no longer ours (expired, or another gateway took over).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
