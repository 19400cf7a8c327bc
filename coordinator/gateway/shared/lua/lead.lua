-- lead: who answers a request key across gateways.
-- KEYS: the key's lock, the key's cached reply. ARGV: a new flight id, lease (ms), "1" to read the cache.
-- {'cached', reply} | {'lead', flight id}: the lock is ours now | {'follow', flight id}: another gateway leads.
if ARGV[3] == '1' then
  local hit = redis.call('GET', KEYS[2])
  if hit then return {'cached', hit} end
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'lead', ARGV[1]}
end
return {'follow', redis.call('GET', KEYS[1])}
