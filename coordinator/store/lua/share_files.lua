-- share_files: task files' texts, for hosts that do not have them; idempotent by content hash.
-- KEYS[10..12]: the files' hashes ("sha256 mtime_ns" by source), their texts, and a version
-- counter that moves when anything changed (readers fetch the texts only then).
-- A.files: [[source, sha256, mtime_ns, text], ...]. Returns how many files changed.
local FHASH, FTEXT, FVERSION = KEYS[10], KEYS[11], KEYS[12]
local changed = 0
for _, f in ipairs(A.files) do
  local stamp = f[2] .. ' ' .. f[3]
  local known = redis.call('HGET', FHASH, f[1])
  if known == false or string.sub(known, 1, 64) ~= f[2] then
    redis.call('HSET', FHASH, f[1], stamp)
    redis.call('HSET', FTEXT, f[1], f[4])
    changed = changed + 1
  end
end
if changed > 0 then redis.call('INCR', FVERSION) end
return changed
