-- renew: extend the live claim's lease (notes of the runner and the worktree ride along); no event.
local problem = fence('renew', 'fenced', nil)
if problem then return {'fenced', problem} end
put('c.renewed_at', NOW)
if arg('child_pid') then
  put('c.child_pid', A.child_pid)
  put('c.child_started_at', arg('child_started_at'))
end
-- A worktree claim notes where it started, so status and a takeover's salvage know.
if arg('base') then put('c.base', A.base) end
if arg('branch') then put('c.branch', A.branch) end
redis.call('ZADD', LEASES, later(get('c.lease_s')), A.task)
return {'ok', all()}
