-- Move due jobs from the delayed set to their lanes' streams, atomically.
-- A member moves only if it is still in the set, so two callers never enqueue it twice.
-- KEYS[1] scheduled sorted set   KEYS[2] held hash (job id -> newest entry id)
-- KEYS[3] lanes set (every lane stream)   KEYS[4] ready doorbell stream
-- then per lane used: KEYS[k] lane stream, KEYS[k + 1] its priority's ready set
-- ARGV[1] consumer group, then per member: member, lane key index k, job id
-- Returns the number of members moved.
local group = ARGV[1]
local moved = 0
for i = 2, #ARGV, 3 do
  local member, k, job = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  if redis.call('ZREM', KEYS[1], member) == 1 then
    local stream = KEYS[k]
    if redis.call('EXISTS', stream) == 0 then
      redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
    end
    redis.call('SADD', KEYS[3], stream)
    local id = redis.call('XADD', stream, '*', 'job', job)
    redis.call('HSET', KEYS[2], job, id)
    redis.call('ZADD', KEYS[k + 1], 0, stream)
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call('XADD', KEYS[4], 'MAXLEN', 1, '*', 'rung', 1)
end
return moved
