-- Settle runs whose outcome MongoDB has stored: acknowledge and delete each entry, park a
-- retry in the delayed set, and ring the event doorbell, atomically.
-- `held[job]` is dropped only while it still names the settled entry: a newer entry for
-- the same job (a requeue, a reconciled duplicate) keeps the job held.
-- KEYS[1] scheduled sorted set   KEYS[2] held hash (job id -> newest entry id)
-- then the lane streams of the entries
-- ARGV[1] consumer group   ARGV[2] events channel   ARGV[3] number of entries (N)
-- then N times: lane stream key index, entry id, job id, retry at ms ("" = no retry),
--               delayed-set member (used for a retry)
-- then the events to publish
-- Returns the number of entries settled.
local n = tonumber(ARGV[3])
local i = 4
for _ = 1, n do
  local stream, id, job = KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2]
  if ARGV[i + 3] ~= '' then
    redis.call('ZADD', KEYS[1], ARGV[i + 3], ARGV[i + 4])
  end
  redis.call('XACK', stream, ARGV[1], id)
  redis.call('XDEL', stream, id)
  if redis.call('HGET', KEYS[2], job) == id then
    redis.call('HDEL', KEYS[2], job)
  end
  i = i + 5
end
for e = i, #ARGV do
  redis.call('PUBLISH', ARGV[2], ARGV[e])
end
return n
