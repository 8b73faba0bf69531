-- Enqueue jobs and ring the event doorbell, atomically.
-- A ready job gets a stream entry and `held[job] = entry id` (its newest entry); a
-- delayed job gets a member of the delayed set.
-- KEYS[1] stream:high   KEYS[2] stream:default   KEYS[3] stream:low
-- KEYS[4] scheduled sorted set   KEYS[5] held hash (job id -> newest entry id)
-- ARGV[1] events channel   ARGV[2] number of jobs (J)
-- then J times: stream index (1-3), job id, prev ("" if none), run at ms ("" = ready now)
-- then the events to publish
-- Returns the number of jobs enqueued.
local jobs = tonumber(ARGV[2])
local i = 3
for _ = 1, jobs do
  local stream, job, prev, run_at = KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2],
                                    ARGV[i + 3]
  if run_at == '' then
    local id
    if prev == '' then
      id = redis.call('XADD', stream, '*', 'job', job)
    else
      id = redis.call('XADD', stream, '*', 'job', job, 'prev', prev)
    end
    redis.call('HSET', KEYS[5], job, id)
  else
    local priority = ({'high', 'default', 'low'})[tonumber(ARGV[i])]
    redis.call('ZADD', KEYS[4], run_at, priority .. ':' .. job)
  end
  i = i + 4
end
for e = i, #ARGV do
  redis.call('PUBLISH', ARGV[1], ARGV[e])
end
return jobs
