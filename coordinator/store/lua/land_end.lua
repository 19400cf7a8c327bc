-- land, second half: the ref moved (A.landed) and the task is done; or it did not, and nothing changes.
local mine = redis.call('GET', LANDING) == A.task .. ' ' .. (arg('token') or '')
if mine then redis.call('DEL', LANDING) end
if not arg('landed') then return {'ok'} end
local problem = fence('land', 'land_fenced', 'land')
if problem == 'replay' then return {'ok', all()} end
if problem then return {'fenced', problem} end
put('attempts', A.attempt)
put('state', A.to)
put('last_error', nil)
put('finished_at', NOW)
put('retry_at', nil)
note_workspace()
add_history(A.entry)
ended('land')
emit('landed', {{'task', q(A.task)}, {'agent', q(A.agent)}, {'epoch', q(A.epoch)}, {'commit', q(A.landed)},
                {'state', q(A.to)}})
return {'ok', all()}
