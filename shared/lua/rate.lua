-- Take COST units from a rate limiter (GCRA: the generic cell rate algorithm), atomically.
-- The key holds the "theoretical arrival time" (ms): when the limiter would be empty
-- again. A request fits if, after adding COST, that time is at most TOLERANCE ahead of now.
-- A request bigger than the whole tolerance fits only when the limiter is empty.
-- KEYS[1] the limiter
-- ARGV[1] interval (ms per unit)   ARGV[2] tolerance (units that may pass at once)
-- ARGV[3] cost (units)
-- Returns 0 when taken, else the milliseconds to wait before the same request would fit.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval, tolerance, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local burst = math.max(tolerance, cost) * interval
local new_tat = tat + cost * interval
if new_tat - now > burst then
  return math.ceil(new_tat - now - burst)
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1)
return 0
