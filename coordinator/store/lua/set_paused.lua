-- set_paused: pause or resume the fleet; an event only when it changed.
local paused = redis.call('EXISTS', PAUSED) == 1
if paused == A.paused then return 0 end
if A.paused then redis.call('SET', PAUSED, NOW) else redis.call('DEL', PAUSED) end
emit(A.paused and 'paused' or 'resumed', {})
return 1
