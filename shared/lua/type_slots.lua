-- Concurrency slots of limited job types. Per type, three sorted sets and a hash (KEYS
-- in fours):
--   running   the ids of its running jobs, scored by the time (ms, Redis time) their
--             lease runs out;
--   reserved  the ids of held-back jobs just woken for a freed slot, scored by when the
--             reservation runs out: the slot is theirs when they come back;
--   waiting   the delayed-set members of the held-back jobs that sleep until a slot
--             frees, scored by their place in line;
--   tags      the line's clock: per tenant the last place it was given, and under ""
--             the place last woken.
-- Places are fair across tenants (start-time fair queueing): a job joining the line
-- gets 1 + the later of its tenant's last place and the place last woken, so each
-- tenant's jobs keep their order and one tenant's long line does not hold back another
-- tenant's first job; tenants' jobs are woken in turn.
-- A type's slots in use are its running plus its reserved jobs. Expired members of both
-- (their worker died, or a woken job never came back) are dropped before anything else.
-- ARGV[1] op   ARGV[2] lease (ms)   ARGV[3] reservation (ms)   then per four keys:
-- acquire:   its limit, the number of candidates C, then C times: job id, force (1:
--            already running, counted but never refused), delayed-set member ("" for
--            none). A candidate admitted leaves the waiting set; one refused keeps its
--            place there. A job holding a slot or a reservation keeps it; the others
--            take free slots once the jobs ahead of them in line have theirs.
-- refresh:   the number of jobs C, then C job ids; extends the leases of those still
--            running (a released slot is not taken again).
-- release:   its limit, the number of jobs C, then C job ids: they free their slots.
-- wait:      its limit, the number of members C, then C times: member, tenant. They join
--            the waiting set, keeping a place they already have.
-- unreserve: its limit, the number of jobs C, then C job ids: their reservations are
--            dropped (the woken job is gone).
-- Every op but refresh then fills the free slots of each type from its waiting set:
-- each job popped gets a reservation and is returned to be woken (made due in the
-- delayed set).
-- Returns: acquire {admitted ids, woken, waiting counts}; refresh the number of leases
-- extended; the others woken. woken is flat: key-group index, member, place, ...
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op = ARGV[1]
local expiry = now + tonumber(ARGV[2])
local reserve = now + tonumber(ARGV[3])
local admitted, woken, counts = {}, {}, {}
local extended = 0
local a = 4

local function expire_when_idle(key, margin)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIREAT', key, math.floor(tonumber(last[2])) + margin)
  end
end

for k = 1, #KEYS / 4 do
  local running, reserved, waiting, tags = KEYS[4 * k - 3], KEYS[4 * k - 2],
                                           KEYS[4 * k - 1], KEYS[4 * k]
  if op == 'refresh' then
    local n = tonumber(ARGV[a])
    a = a + 1
    for _ = 1, n do
      extended = extended + redis.call('ZADD', running, 'XX', 'CH', expiry, ARGV[a])
      a = a + 1
    end
  else
    redis.call('ZREMRANGEBYSCORE', running, '-inf', now)
    redis.call('ZREMRANGEBYSCORE', reserved, '-inf', now)
    local limit, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    a = a + 2
    local ids = {}
    if op == 'acquire' then
      -- Waiting jobs go first: a candidate takes a free slot only if more are free than
      -- jobs wait ahead of it (all the waiting ones, unless it has a place in line).
      local free = limit - redis.call('ZCARD', running) - redis.call('ZCARD', reserved)
      for _ = 1, n do
        local job, force, member = ARGV[a], ARGV[a + 1], ARGV[a + 2]
        a = a + 3
        local place = member ~= '' and redis.call('ZSCORE', waiting, member)
        local admit = false
        if redis.call('ZSCORE', running, job) or redis.call('ZREM', reserved, job) == 1 then
          admit = true
        else
          local ahead
          if place then
            ahead = redis.call('ZCOUNT', waiting, '-inf', '(' .. place)
          else
            ahead = redis.call('ZCARD', waiting)
          end
          if force == '1' or free > ahead then
            free = free - 1
            admit = true
          end
        end
        if admit then
          redis.call('ZADD', running, expiry, job)
          if place then
            redis.call('ZREM', waiting, member)
          end
          admitted[#admitted + 1] = job
        end
      end
    elseif op == 'wait' then
      local woken_place = tonumber(redis.call('HGET', tags, '') or '0')
      for _ = 1, n do
        local member, tenant = ARGV[a], ARGV[a + 1]
        a = a + 2
        if not redis.call('ZSCORE', waiting, member) then
          local place = math.max(woken_place,
                                 tonumber(redis.call('HGET', tags, tenant) or '0')) + 1
          redis.call('HSET', tags, tenant, place)
          redis.call('ZADD', waiting, place, member)
        end
      end
      -- Bounded by the safety net: every waiting job comes back by then and rejoins.
      redis.call('PEXPIRE', waiting, tonumber(ARGV[2]) + 600000)
      redis.call('PEXPIRE', tags, tonumber(ARGV[2]) + 600000)
    else
      for _ = 1, n do
        ids[#ids + 1] = ARGV[a]
        a = a + 1
      end
      if #ids > 0 then
        redis.call('ZREM', op == 'release' and running or reserved, unpack(ids))
      end
    end
    -- Fill the free slots from the waiting set, longest waiting first.
    local free = limit - redis.call('ZCARD', running) - redis.call('ZCARD', reserved)
    if free > 0 then
      local popped = redis.call('ZPOPMIN', waiting, free)
      for i = 1, #popped, 2 do
        local member = popped[i]
        redis.call('ZADD', reserved, reserve, string.match(member, '[^:]+$'))
        woken[#woken + 1] = k
        woken[#woken + 1] = member
        woken[#woken + 1] = popped[i + 1]
      end
      if #popped > 0 then
        redis.call('HSET', tags, '', popped[#popped])
      end
    end
    counts[k] = redis.call('ZCARD', waiting)
    expire_when_idle(reserved, 1000)
  end
  -- The keys outlive their latest lease by a little: an idle type leaves nothing behind.
  expire_when_idle(running, 1000)
end
if op == 'acquire' then
  return {admitted, woken, counts}
elseif op == 'refresh' then
  return extended
end
return woken
