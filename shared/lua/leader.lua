-- Acquire or renew a lease lock.
-- KEYS[1] lock key
-- ARGV[1] this holder's token   ARGV[2] lease ms
-- Returns 1 when the caller holds the lock for the next lease, else 0.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder and redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
