-- renew: extend the live claim's lease (a note of the runner's identity rides along); no event.
local problem = fence('renew', 'fenced', nil)
if problem then return {'fenced', problem} end
put('c.renewed_at', NOW)
if arg('child_pid') then
  put('c.child_pid', A.child_pid)
  put('c.child_started_at', arg('child_started_at'))
end
redis.call('ZADD', LEASES, later(get('c.lease_s')), A.task)
return {'ok', all()}
