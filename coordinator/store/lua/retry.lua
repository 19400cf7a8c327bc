-- retry: a finished task back to pending, attempts and conflicts reset, a new generation.
local current = state()
if not member(A.from, current) then return {'state', current} end
local generation = num('generation', 0) + 1
put('state', A.to)
put('attempts', 0)
put('conflicts', 0)
put('last_error', nil)
put('retry_at', nil)
put('generation', generation)
emit('retried', {{'task', q(A.task)}, {'previous', q(current)}, {'state', q(A.to)},
                 {'generation', q(generation)}})
return {'ok', all()}
