-- hold: check a call's budgets across gateways and reserve its estimate, atomically (budgets.check_budget's rule).
-- KEYS: the fleet's spend hash, [the task's spend hash]. Spend hashes: usd, tok (spent), rusd, rtok (reserved);
-- a task's also g, the retry generation its figures count (a newer one starts from zero).
-- ARGV: estimate USD, estimate tokens, fleet max USD (0: none), generation, task max USD, task max tokens ('' : none),
-- this host's marker field (seed.lua sets it when it adds the host's ledger).
-- {'ok', generation held} | {'fleet', spent + reserved} | {'task', USD spent + reserved, tokens spent + reserved}
-- | {'unseeded'}: this host's ledger is not in the shared spend (a flushed Redis); seed, then ask again.
local function num(key, field)
  return tonumber(redis.call('HGET', key, field) or '0')
end
if redis.call('HEXISTS', KEYS[1], ARGV[7]) == 0 then return {'unseeded'} end
local est_usd, est_tok, fleet_max = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local fleet = num(KEYS[1], 'usd') + num(KEYS[1], 'rusd')
if fleet_max > 0 and (fleet >= fleet_max or fleet + est_usd > fleet_max) then
  return {'fleet', tostring(fleet)}
end
local gen = tonumber(ARGV[4])
if KEYS[2] then
  local held = num(KEYS[2], 'g')
  if gen > held then
    redis.call('HSET', KEYS[2], 'g', gen, 'usd', 0, 'tok', 0, 'rusd', 0, 'rtok', 0)
    held = gen
  end
  gen = held
  local usd = num(KEYS[2], 'usd') + num(KEYS[2], 'rusd')
  local tok = num(KEYS[2], 'tok') + num(KEYS[2], 'rtok')
  local max_usd, max_tok = tonumber(ARGV[5]), tonumber(ARGV[6])
  local over_usd = max_usd and (usd >= max_usd or usd + est_usd > max_usd)
  local over_tok = max_tok and (tok >= max_tok or tok + est_tok > max_tok)
  if over_usd or over_tok then
    return {'task', tostring(usd), tostring(tok)}
  end
  redis.call('HINCRBYFLOAT', KEYS[2], 'rusd', ARGV[1])
  redis.call('HINCRBYFLOAT', KEYS[2], 'rtok', ARGV[2])
end
redis.call('HINCRBYFLOAT', KEYS[1], 'rusd', ARGV[1])
return {'ok', tostring(gen)}
