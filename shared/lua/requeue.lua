-- Give claimed stale entries back to the workers: each is re-added to its lane as a
-- fresh entry that counts deliveries ("n") and names the entry the job's dead run had
-- claimed ("prev", so the new entry may take that claim over); the old entry is
-- acknowledged and deleted, the held hash names the new entry and the lane is ready.
-- KEYS[1] held hash (job id -> newest entry id)   KEYS[2] ready doorbell stream
-- then per lane used: KEYS[k] lane stream, KEYS[k + 1] its priority's ready set
-- ARGV    consumer group, then per entry: lane key index k, entry id, job id,
--         deliveries, prev ("" when the job was never claimed)
-- Returns the number of entries requeued.
local group = ARGV[1]
local count = 0
for i = 2, #ARGV, 5 do
  local k, id, job = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2]
  local stream = KEYS[k]
  local n = tonumber(ARGV[i + 3]) + 1
  local new_id
  if ARGV[i + 4] == '' then
    new_id = redis.call('XADD', stream, '*', 'job', job, 'n', n)
  else
    new_id = redis.call('XADD', stream, '*', 'job', job, 'n', n, 'prev', ARGV[i + 4])
  end
  redis.call('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
  redis.call('HSET', KEYS[1], job, new_id)
  redis.call('ZADD', KEYS[k + 1], 0, stream)
  count = count + 1
end
if count > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', 1, '*', 'rung', 1)
end
return count
