-- seed: add one host's own ledger to the shared spend, once per shared state (again after a flush wiped it).
-- KEYS: the fleet's spend hash, then task spend hashes. ARGV: this host's marker field (h:<host>), its fleet
-- USD, then per task key: generation, USD, tokens. A host already counted (its marker set) adds nothing.
-- Returns 1 when it added, 0 when the host was already counted.
if redis.call('HSETNX', KEYS[1], ARGV[1], '1') == 0 then return 0 end
redis.call('HINCRBYFLOAT', KEYS[1], 'usd', ARGV[2])
for i = 2, #KEYS do
  local at = 3 + (i - 2) * 3
  local gen = tonumber(ARGV[at])
  local held = tonumber(redis.call('HGET', KEYS[i], 'g') or '0')
  if gen > held then
    redis.call('HSET', KEYS[i], 'g', gen, 'usd', 0, 'tok', 0, 'rusd', 0, 'rtok', 0)
    held = gen
  end
  if gen == held then
    redis.call('HINCRBYFLOAT', KEYS[i], 'usd', ARGV[at + 1])
    redis.call('HINCRBYFLOAT', KEYS[i], 'tok', ARGV[at + 2])
  end
end
return 1
