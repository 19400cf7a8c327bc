-- claim_next, first half: the best ready task from the server's ready set (claim.lua's body claims it).
-- A retried call (its outcome was lost) finds the task its token already claimed.
local mine = redis.call('HGET', CLAIMED, A.agent)
if mine and string.sub(mine, 1, #A.token + 1) == A.token .. ' ' then
  A.task = string.sub(mine, #A.token + 2)
  TASK = tkey(A.task)
  if get('c.token') == A.token then return {'claimed', all(), A.task} end
  return {'none'}  -- that claim has ended since
end
if redis.call('EXISTS', PAUSED) == 1 then return {'paused'} end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', DELAYED, '-inf', NOW, 'LIMIT', 0, 64)) do
  redis.call('ZREM', DELAYED, id)
  place(id)  -- its backoff is over (or it is no longer pending: then nothing)
end
while true do
  local top = redis.call('ZRANGE', READY, 0, 0)[1]
  if not top then return {'empty'} end
  redis.call('ZREM', READY, top)
  A.task = string.match(top, '(%S+)$')
  TASK = tkey(A.task)
  local f = redis.call('HMGET', TASK, 'state', 'd.rank', 'd.waiting', 'retry_at')
  if (f[1] or 'pending') == 'pending' and f[2] == top and tonumber(f[3] or '0') == 0 then
    if not f[4] or tonumber(NOW) >= tonumber(f[4]) then break end
    redis.call('ZADD', DELAYED, f[4], A.task)
  end  -- else not ready after all (place() keeps the set exact; this guards against a member it missed)
end
