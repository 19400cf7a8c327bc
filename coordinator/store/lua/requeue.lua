-- requeue: a conflict or red gate; pending again with the attempt unspent, failed past max_conflicts.
local problem = fence(A.kind, 'fenced', 'requeue')
if problem == 'replay' then return {'ok', all()} end
if problem then return {'fenced', problem} end
local conflicts = num('conflicts', 0) + 1
local to = 'pending'
put('last_error', A.reason)
if conflicts > A.max_conflicts then
  to = 'failed'
  put('attempts', A.attempt)
  put('finished_at', NOW)
  put('last_error', A.reason .. ' (' .. conflicts .. ' conflicts, more than max_conflicts)')
end
put('conflicts', conflicts)
put('state', to)
note_workspace()
add_history(A.entry)
ended('requeue')
emit(A.kind, {{'task', q(A.task)}, {'agent', q(A.agent)}, {'epoch', q(A.epoch)}, {'reason', q(A.reason)},
              {'conflicts', q(conflicts)}, {'state', q(to)}})
return {'ok', all()}
