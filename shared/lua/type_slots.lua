-- Concurrency slots of limited job types: one sorted set per type holds the ids of its
-- running jobs, scored by the time (ms, Redis time) their lease runs out.
-- KEYS    one sorted set per job type
-- ARGV[1] "acquire" or "refresh"   ARGV[2] lease (ms)
-- acquire: then per key: its limit, the number of candidates C, then C times: job id,
--          force (1: already running, counted but never refused). Expired members
--          (their worker died) go first; a job already holding a slot keeps it.
--          Returns the ids admitted.
-- refresh: then per key: the number of jobs C, then C job ids; extends the leases of
--          those still holding a slot (a released slot is not taken again).
--          Returns the number of leases extended.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local acquire = ARGV[1] == 'acquire'
local lease = tonumber(ARGV[2])
local expiry = now + lease
local admitted = {}
local extended = 0
local a = 3
for k = 1, #KEYS do
  local key = KEYS[k]
  if acquire then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local limit, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    a = a + 2
    local running = redis.call('ZCARD', key)
    for _ = 1, n do
      local job, force = ARGV[a], ARGV[a + 1]
      a = a + 2
      if redis.call('ZSCORE', key, job) then
        redis.call('ZADD', key, expiry, job)
        admitted[#admitted + 1] = job
      elseif force == '1' or running < limit then
        redis.call('ZADD', key, expiry, job)
        running = running + 1
        admitted[#admitted + 1] = job
      end
    end
  else
    local n = tonumber(ARGV[a])
    a = a + 1
    for _ = 1, n do
      extended = extended + redis.call('ZADD', key, 'XX', 'CH', expiry, ARGV[a])
      a = a + 1
    end
  end
  -- The key outlives its latest lease by a little, so an idle type leaves nothing behind.
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIREAT', key, math.floor(tonumber(last[2])) + 1000)
  end
end
if acquire then
  return admitted
end
return extended
