-- Enqueue jobs and ring the event doorbell, atomically.
-- A ready job gets an entry in its lane's stream (created with the consumer group if
-- new), `held[job] = entry id` (its newest entry), and its lane joins its priority's
-- ready set; a delayed job gets a member of the delayed set.
-- KEYS[1] scheduled sorted set   KEYS[2] held hash (job id -> newest entry id)
-- KEYS[3] lanes set (every lane stream)   KEYS[4] ready doorbell stream
-- then per lane used: KEYS[k] lane stream, KEYS[k + 1] its priority's ready set
-- ARGV[1] consumer group   ARGV[2] events channel   ARGV[3] number of jobs (J)
-- then J times: lane key index k, job id, prev ("" if none), run at ms ("" = ready now),
--               delayed-set member (used when run at ms is set)
-- then the events to publish
-- Returns the number of jobs enqueued.
local group = ARGV[1]
local jobs = tonumber(ARGV[3])
local rung = false
local i = 4
for _ = 1, jobs do
  local k, job, prev, run_at, member = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2],
                                       ARGV[i + 3], ARGV[i + 4]
  if run_at == '' then
    local stream = KEYS[k]
    if redis.call('EXISTS', stream) == 0 then
      redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
    end
    redis.call('SADD', KEYS[3], stream)
    local id
    if prev == '' then
      id = redis.call('XADD', stream, '*', 'job', job)
    else
      id = redis.call('XADD', stream, '*', 'job', job, 'prev', prev)
    end
    redis.call('HSET', KEYS[2], job, id)
    redis.call('ZADD', KEYS[k + 1], 0, stream)
    rung = true
  else
    redis.call('ZADD', KEYS[1], run_at, member)
  end
  i = i + 5
end
if rung then
  redis.call('XADD', KEYS[4], 'MAXLEN', 1, '*', 'rung', 1)
end
for e = i, #ARGV do
  redis.call('PUBLISH', ARGV[2], ARGV[e])
end
return jobs
