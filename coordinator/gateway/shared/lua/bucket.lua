-- bucket: a backend's rpm / input_tpm / output_tpm token buckets shared by every gateway (limits.TokenBucket's rule).
-- Buckets refill continuously at per_minute / 60 a second, hold burst_s seconds' worth (at least 1), may go into
-- debt; time is the server's TIME, so every host agrees.
-- KEYS: the rpm, input_tpm, output_tpm buckets (hashes: level, stamp).
-- ARGV: 'take' or 'debit', rpm, input_tpm, output_tpm (per minute, 0: none), input tokens, output tokens, burst_s.
-- take: 0 when granted (1 request and the input estimate debited), else milliseconds to wait before asking again.
-- debit: after the call, input (a correction of the estimate, may be negative) and output tokens; returns 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local burst = tonumber(ARGV[7])
local buckets = {}
for i = 1, 3 do
  local rate = tonumber(ARGV[i + 1]) / 60
  if rate > 0 then
    local cap = math.max(1, rate * burst)
    local level = tonumber(redis.call('HGET', KEYS[i], 'level') or cap)
    local stamp = tonumber(redis.call('HGET', KEYS[i], 'stamp') or now)
    buckets[i] = {rate = rate, cap = cap, level = math.min(cap, level + math.max(0, now - stamp) * rate)}
  end
end
local function wait_s(i, cost)
  local b = buckets[i]
  if not b then return 0 end
  local need = math.min(cost, b.cap)
  if b.level >= need - 1e-6 then return 0 end
  return (need - b.level) / b.rate
end
local function debit(i, cost)
  local b = buckets[i]
  if b then
    redis.call('HSET', KEYS[i], 'level', tostring(b.level - cost), 'stamp', tostring(now))
    redis.call('PEXPIRE', KEYS[i], 120000)
  end
end
local input, output = tonumber(ARGV[5]), tonumber(ARGV[6])
if ARGV[1] == 'debit' then
  debit(2, input)
  debit(3, output)
  return 0
end
local wait = math.max(wait_s(1, 1), wait_s(2, input), wait_s(3, 1))
if wait > 0 then return math.max(1, math.ceil(wait * 1000)) end
debit(1, 1)
debit(2, input)
return 0
