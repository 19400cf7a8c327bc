-- release: the holder gives the task back uncounted, fenced.
local problem = fence('release', 'fenced', 'release')
if problem == 'replay' then return {'ok', all()} end
if problem then return {'fenced', problem} end
return released(A.reason, 'release')
