-- Give claimed stale entries back to the workers: each is re-added as a fresh entry that
-- counts deliveries ("n") and names the entry the job's dead run had claimed ("prev", so
-- the new entry may take that claim over); the old entry is acknowledged and deleted, and
-- the held hash names the new entry.
-- KEYS[1] stream:high   KEYS[2] stream:default   KEYS[3] stream:low
-- KEYS[4] held hash (job id -> newest entry id)
-- ARGV    consumer group, then per entry: stream index (1-3), entry id, job id,
--         deliveries, prev ("" when the job was never claimed)
-- Returns the number of entries requeued.
local group = ARGV[1]
local count = 0
for i = 2, #ARGV, 5 do
  local stream, id, job = KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2]
  local n = tonumber(ARGV[i + 3]) + 1
  local new_id
  if ARGV[i + 4] == '' then
    new_id = redis.call('XADD', stream, '*', 'job', job, 'n', n)
  else
    new_id = redis.call('XADD', stream, '*', 'job', job, 'n', n, 'prev', ARGV[i + 4])
  end
  redis.call('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
  redis.call('HSET', KEYS[4], job, new_id)
  count = count + 1
end
return count
