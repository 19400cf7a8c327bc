-- repair: a record left running with no claim goes back to pending, uncounted.
if landing_here() then return {'busy'} end
if get('state') == nil or not member(A.from, state()) or get('c.epoch') ~= nil then return {'none'} end
put('state', A.to)
emit('released', {{'task', q(A.task)}, {'agent', q(get('agent'))}, {'epoch', q(num('epoch', 0))},
                  {'reason', q('running record had no claim')}, {'state', q(A.to)}})
return {'ok', all()}
