-- land, first half: the claim is live and no other landing runs; take the landing lock.
local problem = fence('land', 'land_fenced', nil)
if problem then return {'fenced', problem} end
if redis.call('SET', LANDING, A.task .. ' ' .. (arg('token') or ''), 'NX', 'PX', A.hold_ms) == false then
  return {'busy'}
end
return {'ok'}
