-- cancel: a pending or running task; returns the claim it had (the holder's next call is fenced).
if landing_here() then return {'busy'} end
local current = state()
if not member(A.from, current) then return {'state', current} end
local before = all()
local agent = get('c.agent')
put('state', A.to)
put('finished_at', NOW)
if agent ~= nil then
  add_history({head = '{"attempt":' .. get('c.attempt') .. ',"agent":' .. q(agent) .. ',"epoch":' ..
               get('c.epoch') .. ',"started_at":' .. get('c.claimed_at'),
               tail = '"outcome":"cancelled","error":"cancelled while running"}'})
end
drop_claim()
redis.call('SADD', RECORDS, A.task)
emit('cancelled', {{'task', q(A.task)}, {'agent', q(agent)}, {'state', q(A.to)}})
return {'ok', all(), before}
