-- Delete the consumers of one stream's group that own no pending entry and have been
-- idle (no read, claim or heartbeat) longer than a limit: workers that are gone. In one
-- script, so no consumer can take an entry between the check and the delete (deleting
-- a consumer drops its pending entries). A live worker's consumer that is deleted is
-- simply created again by its next read.
-- KEYS[1] stream
-- ARGV[1] consumer group   ARGV[2] min idle ms
-- Returns the number of consumers deleted.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if consumers.err then  -- no such group (yet)
  return 0
end
local min_idle = tonumber(ARGV[2])
local deleted = 0
for _, flat in ipairs(consumers) do
  local info = {}
  for i = 1, #flat, 2 do
    info[flat[i]] = flat[i + 1]
  end
  if tonumber(info['pending']) == 0 and tonumber(info['idle']) > min_idle then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    deleted = deleted + 1
  end
end
return deleted
