-- note: an event that changes no state; A.body is its fields as a JSON object.
local parts = {'"ts":' .. NOW, '"event":' .. cjson.encode(A.kind)}
if A.body ~= '{}' then parts[3] = string.sub(A.body, 2, -2) end
redis.call('XADD', EVENTS, '0-*', 'e', '{' .. table.concat(parts, ',') .. '}')
return 1
