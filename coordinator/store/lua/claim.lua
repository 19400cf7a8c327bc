-- claim: a pending, unclaimed task (past its retry_at) gets a new claim at epoch + 1.
if arg('token') and get('c.token') == A.token then return {'claimed', all(), A.task} end  -- a retried call: ours
if not member(A.from, state()) then return {'none'} end
local retry_at = num('retry_at')
if retry_at ~= nil and tonumber(NOW) < retry_at then return {'none'} end
local left = num('c.epoch')
if left ~= nil then  -- a pending record's claim is always a crash's leftover
  emit('orphan_claim_removed', {{'task', q(A.task)}, {'agent', q(get('c.agent'))}, {'epoch', q(left)},
                                {'record_state', q(state())}})
  drop_claim()
end
local epoch = math.max(num('epoch', 0), left or 0) + 1
local attempt = num('attempts', 0) + 1
redis.call('HSET', TASK, 'c.agent', A.agent, 'c.pid', tostring(A.pid), 'c.pid_started_at', A.pid_started_at,
           'c.host', A.host, 'c.claimed_at', NOW, 'c.renewed_at', NOW, 'c.lease_s', A.lease_s,
           'c.epoch', tostring(epoch), 'c.attempt', tostring(attempt),
           'c.generation', tostring(num('generation', 0)), 'c.token', A.token,
           'state', A.to, 'epoch', tostring(epoch), 'agent', A.agent, 'claimed_at', NOW)
redis.call('SADD', RECORDS, A.task)
redis.call('ZADD', LEASES, later(A.lease_s), A.task)
local rank = get('d.rank')
if rank then redis.call('ZREM', READY, rank) end
redis.call('ZREM', DELAYED, A.task)
redis.call('HSET', CLAIMED, A.agent, A.token .. ' ' .. A.task)  -- a retried claim_next finds its task
emit('claimed', {{'task', q(A.task)}, {'agent', q(A.agent)}, {'epoch', q(epoch)}, {'attempt', q(attempt)},
                 {'state', q(A.to)}})
return {'claimed', all(), A.task}
