-- load: task definitions for the ready set (priority, run order, dependencies); idempotent by signature.
-- A.tasks: [[id, signature, priority, rank, "dep dep ..."], ...]. A.gone: ids whose definitions are no
-- longer valid, dropped only when A.version is still the shared task files' version (KEYS[10]): a
-- loader that has not yet read the newest files drops nothing. Returns {loaded, dropped}.
local FVERSION = KEYS[10]
local loaded, dropped = 0, 0
for _, t in ipairs(A.tasks) do
  local id, key = t[1], tkey(t[1])
  local old = redis.call('HMGET', key, 'd.sig', 'd.deps', 'd.rank')
  if old[1] ~= t[2] then
    for dep in string.gmatch(old[2] or '', '%S+') do redis.call('SREM', dependents_key(dep), id) end
    for dep in string.gmatch(t[5], '%S+') do redis.call('SADD', dependents_key(dep), id) end
    if old[3] and old[3] ~= t[4] then redis.call('ZREM', READY, old[3]) end
    redis.call('HSET', key, 'd.sig', t[2], 'd.prio', t[3], 'd.rank', t[4], 'd.deps', t[5])
    recount(id)
    place(id)
    loaded = loaded + 1
  end
end
if #A.gone > 0 and A.version == (redis.call('GET', FVERSION) or '0') then
  for _, id in ipairs(A.gone) do
    local old = redis.call('HMGET', tkey(id), 'd.deps', 'd.rank')
    for dep in string.gmatch(old[1] or '', '%S+') do redis.call('SREM', dependents_key(dep), id) end
    if old[2] then redis.call('ZREM', READY, old[2]) end
    redis.call('ZREM', DELAYED, id)
    redis.call('HDEL', tkey(id), 'd.sig', 'd.prio', 'd.rank', 'd.deps', 'd.waiting')
    dropped = dropped + 1
  end
end
return {loaded, dropped}
