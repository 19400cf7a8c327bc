-- Shared by every operation script (coordinator/store/redis.py prepends it).
-- KEYS: incarnation, events, leases, paused, landing, records, ready, delayed, claimed, [task hash].
-- ARGV: the incarnation this process saw at start, "now" (empty: the server's TIME), the args as JSON.
-- Every script validates before its first write; nothing below writes until a script decides to.
local INC, EVENTS, LEASES, PAUSED, LANDING, RECORDS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local READY, DELAYED, CLAIMED, TASK = KEYS[7], KEYS[8], KEYS[9], KEYS[10]
-- Every key shares the fleet's prefix (one hash tag): a task's hash is found from its id (pick, settle).
local PREFIX = string.sub(RECORDS, 1, -8)  -- without 'records'
local function tkey(id) return PREFIX .. 'task:' .. id end
local function dependents_key(id) return PREFIX .. 'dependents:' .. id end
local A = cjson.decode(ARGV[3])
local null = cjson.null

local held = redis.call('GET', INC)
if held ~= ARGV[1] then
  return redis.error_reply('INCARNATION ' .. (held or 'missing'))
end

-- Times travel as decimal strings (seconds, microseconds), never through Lua's 14-digit number printing.
local NOW = ARGV[2]
if NOW == '' then
  local t = redis.call('TIME')
  NOW = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end

local function later(seconds)
  return string.format('%.6f', tonumber(NOW) + tonumber(seconds))
end

local function arg(name)
  local v = A[name]
  if v == null then return nil end
  return v
end

local function get(field)
  local v = redis.call('HGET', TASK, field)
  if v == false then return nil end
  return v
end

local function num(field, default)
  local v = get(field)
  if v == nil then return default end
  return tonumber(v)
end

local BEFORE = nil  -- the task's state before this script's first change of it (settle() reads it)

local function put(field, value)
  if field == 'state' and BEFORE == nil then BEFORE = get('state') or 'pending' end
  if value == nil or value == null then
    redis.call('HDEL', TASK, field)
  else
    redis.call('HSET', TASK, field, tostring(value))
  end
end

local function state()
  return get('state') or 'pending'
end

local function all()
  return redis.call('HGETALL', TASK)
end

local function member(list, value)
  for _, item in ipairs(list) do
    if item == value then return true end
  end
  return false
end

-- A JSON value: strings and whole numbers encoded, nil as null.
local function q(v)
  if v == nil or v == null then return 'null' end
  if type(v) == 'number' then return tostring(v) end
  return cjson.encode(v)
end

-- The ready set (DESIGN §13). A task is in READY (score its priority, member its rank: run order, then
-- its id) exactly while it is pending, loaded (load.lua gave it d.rank, d.prio and d.deps) and no
-- dependency is left undone (d.waiting, a counter); in DELAYED (by retry_at) instead while a backoff
-- holds it. place() puts a task where it belongs after any change; pick.lua still checks each member
-- it takes, so a claim never takes an unready task.
local function recount(id)
  local deps, waiting = redis.call('HGET', tkey(id), 'd.deps'), 0
  if deps then
    for dep in string.gmatch(deps, '%S+') do
      if redis.call('HGET', tkey(dep), 'state') ~= 'done' then waiting = waiting + 1 end
    end
  end
  redis.call('HSET', tkey(id), 'd.waiting', waiting)
  return waiting
end

local function place(id)
  local f = redis.call('HMGET', tkey(id), 'state', 'd.rank', 'd.prio', 'd.waiting', 'retry_at')
  local ready = (f[1] or 'pending') == 'pending' and f[2] and tonumber(f[4] or '0') == 0
  local held = ready and f[5] and tonumber(NOW) < tonumber(f[5])
  if held then redis.call('ZADD', DELAYED, f[5], id) else redis.call('ZREM', DELAYED, id) end
  if ready and not held then
    redis.call('ZADD', READY, f[3], f[2])
  elseif f[2] then
    redis.call('ZREM', READY, f[2])
  end
end

-- After a state change: the task's dependents recount when it became done or stopped being done,
-- and the task itself is placed. emit() calls it, as every state change ends with its event.
local function settle()
  if BEFORE == nil then return end
  local now_state = state()
  if (BEFORE == 'done') ~= (now_state == 'done') then
    for _, id in ipairs(redis.call('SMEMBERS', dependents_key(A.task))) do
      recount(id)
      place(id)
    end
  end
  place(A.task)
  BEFORE = nil
end

-- Append one event, fields in order ({name, json} pairs), its ts the operation's time; a state change
-- written before it is settled into the ready set first.
local function emit(kind, fields)
  settle()
  local parts = {'"ts":' .. NOW, '"event":' .. cjson.encode(kind)}
  for _, f in ipairs(fields) do
    parts[#parts + 1] = cjson.encode(f[1]) .. ':' .. f[2]
  end
  redis.call('XADD', EVENTS, '0-*', 'e', '{' .. table.concat(parts, ',') .. '}')
end

local CLAIM_FIELDS = {'c.agent', 'c.pid', 'c.pid_started_at', 'c.host', 'c.claimed_at', 'c.renewed_at',
                      'c.lease_s', 'c.epoch', 'c.attempt', 'c.child_pid', 'c.child_started_at',
                      'c.generation', 'c.token'}

local function drop_claim()
  redis.call('HDEL', TASK, unpack(CLAIM_FIELDS))
  redis.call('ZREM', LEASES, A.task)
end

-- A history entry: the caller's JSON around this operation's finished_at.
local function add_history(entry)
  local piece = entry.head .. ',"finished_at":' .. NOW .. ',' .. entry.tail
  local h = get('history')
  if h == nil or h == '[]' then
    put('history', '[' .. piece .. ']')
  else
    put('history', string.sub(h, 1, -2) .. ',' .. piece .. ']')
  end
end

local function note_workspace()
  for field, value in pairs(A.workspace or {}) do put(field, value) end
  if arg('file_hash') then put('file_hash', A.file_hash) end
end

-- Whether a landing on this task is in progress (reclaim, cancel and repair wait for it).
local function landing_here()
  local v = redis.call('GET', LANDING)
  return v and string.sub(v, 1, #A.task + 1) == A.task .. ' '
end

-- Fencing: the record running at the caller's epoch, the live claim the caller's (agent, token).
-- Returns nil when current; 'replay' when this very claim already did `op` (a retried call);
-- else the problem, after writing the refusal's event.
local function fence(action, kind, op)
  local s, epoch = get('state'), num('epoch', 0)
  local problem
  if s == nil or epoch ~= A.epoch or s ~= 'running' then
    problem = 'task is now ' .. (s or 'missing') .. ' at epoch ' .. epoch
  elseif num('c.epoch') ~= A.epoch or get('c.agent') ~= A.agent or get('c.token') ~= arg('token') then
    problem = 'claim no longer ours'
  end
  if problem == nil then return nil end
  if op and arg('token') and get('last_token') == A.token and get('last_op') == op then return 'replay' end
  emit(kind, {{'task', q(A.task)}, {'agent', q(A.agent)}, {'epoch', q(A.epoch)}, {'action', q(action)},
              {'reason', q(problem)}})
  return problem
end

-- The claim ends; `op` (nil when someone else ends it) is what a retried call by its holder replays.
local function ended(op)
  put('last_token', op and arg('token'))
  put('last_op', op)
  drop_claim()
end

local function released(reason, op)
  put('state', 'pending')
  ended(op)
  emit('released', {{'task', q(A.task)}, {'agent', q(A.agent)}, {'epoch', q(A.epoch)}, {'reason', q(reason)},
                    {'state', q('pending')}})
  return {'ok', all()}
end
