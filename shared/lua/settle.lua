-- Settle runs whose outcome MongoDB has stored: acknowledge and delete each entry, park a
-- retry in the delayed set, and ring the event doorbell, atomically.
-- `held[job]` is dropped only while it still names the settled entry: a newer entry for
-- the same job (a requeue, a reconciled duplicate) keeps the job held.
-- KEYS[1] stream:high   KEYS[2] stream:default   KEYS[3] stream:low
-- KEYS[4] scheduled sorted set   KEYS[5] held hash (job id -> newest entry id)
-- ARGV[1] consumer group   ARGV[2] events channel   ARGV[3] number of entries (N)
-- then N times: stream index (1-3), entry id, job id, retry at ms ("" = no retry)
-- then the events to publish
-- Returns the number of entries settled.
local n = tonumber(ARGV[3])
local i = 4
for _ = 1, n do
  local index = tonumber(ARGV[i])
  local stream, id, job, retry_at = KEYS[index], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if retry_at ~= '' then
    local priority = ({'high', 'default', 'low'})[index]
    redis.call('ZADD', KEYS[4], retry_at, priority .. ':' .. job)
  end
  redis.call('XACK', stream, ARGV[1], id)
  redis.call('XDEL', stream, id)
  if redis.call('HGET', KEYS[5], job) == id then
    redis.call('HDEL', KEYS[5], job)
  end
  i = i + 4
end
for e = i, #ARGV do
  redis.call('PUBLISH', ARGV[2], ARGV[e])
end
return n
