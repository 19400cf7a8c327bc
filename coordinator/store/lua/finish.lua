-- finish: an attempt's outcome (A.to: done, pending again, failed), fenced.
local problem = fence(A.action, 'fenced', 'finish')
if problem == 'replay' then return {'ok', all()} end
if problem then return {'fenced', problem} end
local retry_at = nil
if A.to == 'pending' and tonumber(A.backoff_s) > 0 then retry_at = later(A.backoff_s) end
put('attempts', A.attempt)
put('state', A.to)
put('last_error', arg('error'))
put('finished_at', NOW)
put('retry_at', retry_at)
if arg('usage') then put('usage', A.usage) end
note_workspace()
add_history(A.entry)
ended('finish')
emit(A.kind, {{'task', q(A.task)}, {'agent', q(A.agent)}, {'epoch', q(A.epoch)}, {'attempt', q(A.attempt)},
              {'error', q(arg('error'))}, {'state', q(A.to)}, {'retry_at', retry_at or 'null'}})
return {'ok', all()}
