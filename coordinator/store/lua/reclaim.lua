-- reclaim: take over a claim judged stale, only if it is still exactly the one judged.
if landing_here() then return {'busy'} end
local same = num('c.epoch') == A.epoch and get('c.agent') == A.agent and get('c.token') == arg('token')
  and num('c.pid') == A.pid and num('c.renewed_at') == tonumber(A.renewed_at)
  and num('c.child_pid') == arg('child_pid')
if not same then return {'none'} end  -- renewed, finished or taken over since it was judged
if num('epoch', 0) ~= A.epoch or state() ~= 'running' then
  emit('orphan_claim_removed', {{'task', q(A.task)}, {'agent', q(A.agent)}, {'epoch', q(A.epoch)},
                                {'record_state', q(state())}})
  drop_claim()
  return {'none'}
end
if not A.counted then return released(A.reason, nil) end
put('attempts', A.attempt)
put('state', A.to)
put('last_error', A.error)
add_history(A.entry)
ended(nil)
emit('reclaimed', {{'task', q(A.task)}, {'agent', q(A.agent)}, {'epoch', q(A.epoch)}, {'reason', q(A.reason)},
                   {'state', q(A.to)}})
return {'ok', all()}
