-- land: the leader's last entry, then the stream expires and the lock is freed (if still ours).
-- KEYS: the lock, the flight's stream. ARGV: flight id, field name ('f' done, 'e' error, 'a' abandoned),
-- its value, stream TTL after completion (ms).
redis.call('XADD', KEYS[2], '*', ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
