"""The Lua that runs inside Redis for the job queue: each script is one atomic step of the bot's
(`RedisQueue`: submit, cancel, order) or a worker's (`RedisWorker`: take, adopt, finish, heartbeat)
side. The key layout they share is drawn in pipeline/redis_queue.py's module docstring.
"""

# Shared functions. P is the prefix; keys are built from it inside
# the scripts because the users and jobs a script touches are only known once it runs.
FAIR_ORDER_LUA = """
local function fair_order(P, limit)
  local lists = {}
  for i, user in ipairs(redis.call('LRANGE', P..':ring', 0, -1)) do
    lists[i] = redis.call('LRANGE', P..':q:'..user, 0, limit - 1)
  end
  local out, round = {}, 1
  while #out < limit do
    local any = false
    for i = 1, #lists do
      local job = lists[i][round]
      if job and #out < limit then out[#out + 1] = job; any = true end
    end
    if not any then break end
    round = round + 1
  end
  return out
end
"""

FINISH_LUA = """
local function finish(P, job, state, outcome, ttl, now, duration)
  local jk = P..':job:'..job
  if not redis.call('SET', P..':result:'..job, outcome, 'NX', 'EX', ttl) then return 0 end
  local user = redis.call('HGET', jk, 'user_id')
  if user then redis.call('SREM', P..':user:'..user, job) end
  redis.call('HSET', jk, 'state', state, 'finished_at', now)
  redis.call('HINCRBY', jk, 'writes', 1)
  redis.call('EXPIRE', jk, ttl)
  redis.call('ZREM', P..':running', job)
  if duration ~= '' then
    redis.call('LPUSH', P..':durations', duration)
    redis.call('LTRIM', P..':durations', 0, 19)
  end
  redis.call('PUBLISH', P..':events', cjson.encode({job = job, state = state, t = tonumber(now)}))
  return 1
end
"""

# ARGV: P, job, user, max_per_user, max_depth, cooldown_ms, request, meta, now, bkey, prompt.
# Limits are checked in LocalQueue's order; the reply is {"ok", position} or {limit name, value}.
SUBMIT = """
local P, job, user = ARGV[1], ARGV[2], ARGV[3]
local mine = redis.call('SCARD', P..':user:'..user)
if mine >= tonumber(ARGV[4]) then return {'per_user', mine} end
local waiting = redis.call('SCARD', P..':waiting')
if waiting >= tonumber(ARGV[5]) then return {'depth', waiting} end
local cooldown = tonumber(ARGV[6])
if cooldown > 0 then
  local left = redis.call('PTTL', P..':cool:'..user)
  if left > 0 then return {'cooldown', left} end
  redis.call('SET', P..':cool:'..user, '1', 'PX', cooldown)
end
redis.call('HSET', P..':job:'..job, 'job_id', job, 'user_id', user, 'request', ARGV[7], 'meta', ARGV[8],
           'submitted_at', ARGV[9], 'bkey', ARGV[10], 'state', 'queued', 'step', 0, 'total', 0, 'attempts', 0,
           'prompt', ARGV[11])
local mine_waiting = redis.call('RPUSH', P..':q:'..user, job)
if mine_waiting == 1 then redis.call('RPUSH', P..':ring', user) end
redis.call('SADD', P..':waiting', job)
redis.call('SADD', P..':user:'..user, job)
redis.call('ZADD', P..':open', ARGV[9], job)
redis.call('RPUSH', P..':wake', job)
redis.call('LTRIM', P..':wake', -64, -1)
-- Round-robin position of the user's k-th waiting job: up to k jobs of each user at or before it in
-- the ring, up to k-1 of each user after it.
local position, before = 0, true
for _, other in ipairs(redis.call('LRANGE', P..':ring', 0, -1)) do
  local n = redis.call('LLEN', P..':q:'..other)
  position = position + math.min(n, before and mine_waiting or mine_waiting - 1)
  if other == user then before = false end
end
return {'ok', position}
"""

# ARGV: P, job, outcome, ttl, now. 2 = removed while waiting, 1 = flagged for its worker, 0 = already over.
CANCEL = FINISH_LUA + """
local P, job = ARGV[1], ARGV[2]
local jk = P..':job:'..job
local state = redis.call('HGET', jk, 'state')
if not state or state == 'done' or state == 'failed' or state == 'cancelled' then return 0 end
redis.call('HSET', jk, 'cancel', '1')
if state == 'queued' then
  local user = redis.call('HGET', jk, 'user_id')
  redis.call('LREM', P..':q:'..user, 1, job)
  if redis.call('LLEN', P..':q:'..user) == 0 then redis.call('LREM', P..':ring', 1, user) end
  redis.call('SREM', P..':waiting', job)
  finish(P, job, 'cancelled', ARGV[3], ARGV[4], ARGV[5], '')
  return 2
end
return 1
"""

ORDER = FAIR_ORDER_LUA + "return fair_order(ARGV[1], tonumber(ARGV[2]))"


RUNNING_LUA = """
local function mark_running(P, job, consumer, now)
  local jk = P..':job:'..job
  redis.call('HSET', jk, 'state', 'running', 'worker', consumer, 'started_at', now, 'step', 0)
  redis.call('ZADD', P..':running', now, job)
  redis.call('PUBLISH', P..':events', cjson.encode({job = job, state = 'running', t = tonumber(now)}))
end
"""

# ARGV: P, consumer, max_n, scan, now. Reply: flat {entry_id, job_id, request JSON, ...}.
TAKE = FAIR_ORDER_LUA + RUNNING_LUA + """
local P, consumer, max_n, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[5]
local order = fair_order(P, tonumber(ARGV[4]))
if #order == 0 then return {} end
local bkey = redis.call('HGET', P..':job:'..order[1], 'bkey')
local picked = {order[1]}
if bkey and bkey ~= '' then
  for i = 2, #order do
    if #picked >= max_n then break end
    if redis.call('HGET', P..':job:'..order[i], 'bkey') == bkey then picked[#picked + 1] = order[i] end
  end
end
for _, job in ipairs(picked) do
  local user = redis.call('HGET', P..':job:'..job, 'user_id')
  redis.call('LREM', P..':q:'..user, 1, job)
  -- Round-robin: a served user goes to the back of the ring, or leaves it with nothing waiting.
  redis.call('LREM', P..':ring', 1, user)
  if redis.call('LLEN', P..':q:'..user) > 0 then redis.call('RPUSH', P..':ring', user) end
  redis.call('SREM', P..':waiting', job)
  redis.call('HINCRBY', P..':job:'..job, 'attempts', 1)
  mark_running(P, job, consumer, now)
  redis.call('XADD', P..':jobs', '*', 'job', job)
end
-- Deliver at once, in this script: the entries are in this worker's pending list before anyone
-- could see them, so XAUTOCLAIM finds them if this worker dies from here on.
local out = {}
local read = redis.call('XREADGROUP', 'GROUP', 'workers', consumer, 'STREAMS', P..':jobs', '>')
if read then
  for _, entry in ipairs(read[1][2]) do
    local job = entry[2][2]
    out[#out + 1] = entry[1]
    out[#out + 1] = job
    out[#out + 1] = redis.call('HGET', P..':job:'..job, 'request') or ''
  end
end
return out
"""

# ARGV: P, entry, job, consumer, now, max_attempts. Reply: {verdict, request JSON}.
ADOPT = RUNNING_LUA + """
local P, entry, job = ARGV[1], ARGV[2], ARGV[3]
local jk = P..':job:'..job
if redis.call('EXISTS', P..':result:'..job) == 1 or redis.call('EXISTS', jk) == 0 then
  redis.call('XACK', P..':jobs', 'workers', entry)
  redis.call('XDEL', P..':jobs', entry)
  return {'answered', ''}
end
if redis.call('HGET', jk, 'cancel') then return {'cancelled', ''} end
if redis.call('HINCRBY', jk, 'attempts', 1) > tonumber(ARGV[6]) then return {'poison', ''} end
mark_running(P, job, ARGV[4], ARGV[5])
return {'run', redis.call('HGET', jk, 'request')}
"""

# ARGV: P, entry, job, state, outcome, ttl, now, duration. Store first, then acknowledge: one script.
FINISH = FINISH_LUA + """
local written = finish(ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
redis.call('XACK', ARGV[1]..':jobs', 'workers', ARGV[2])
redis.call('XDEL', ARGV[1]..':jobs', ARGV[2])
return written
"""

# ARGV: P, consumer, now, entry ids. Re-claims only entries this worker still holds, so a worker that
# was too slow and got taken over does not take the job back.
HEARTBEAT = """
local P, consumer = ARGV[1], ARGV[2]
redis.call('ZADD', P..':workers', ARGV[3], consumer)
for i = 4, #ARGV do
  local mine = redis.call('XPENDING', P..':jobs', 'workers', ARGV[i], ARGV[i], 1, consumer)
  if #mine > 0 then redis.call('XCLAIM', P..':jobs', 'workers', consumer, 0, ARGV[i], 'JUSTID') end
end
"""
