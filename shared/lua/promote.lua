-- Move due jobs from the delayed set to their ready streams, atomically.
-- A member moves only if it is still in the set, so two callers never enqueue it twice.
-- KEYS[1] scheduled sorted set
-- KEYS[2] held hash (job id -> newest entry id)
-- KEYS[3] stream:high   KEYS[4] stream:default   KEYS[5] stream:low
-- ARGV    members "<priority>:<jobId>" to move
-- Returns the number of members moved.
local streams = {high = KEYS[3], default = KEYS[4], low = KEYS[5]}
local moved = 0
for _, member in ipairs(ARGV) do
  if redis.call('ZREM', KEYS[1], member) == 1 then
    local sep = string.find(member, ':', 1, true)
    local priority = string.sub(member, 1, sep - 1)
    local job = string.sub(member, sep + 1)
    local id = redis.call('XADD', streams[priority] or KEYS[4], '*', 'job', job)
    redis.call('HSET', KEYS[2], job, id)
    moved = moved + 1
  end
end
return moved
