-- Read up to COUNT new entries, strictly by priority (high, then default, then low) and,
-- within a priority, round-robin across its lanes (one stream per tenant): each turn
-- gives every ready lane an equal share (at least one entry), starting after the lane
-- read last, which is remembered so successive reads by any worker go on round the
-- ring. A lane that has no new entry left leaves the ready set (enqueues put it back).
-- Lane streams are named by the ready sets' members (keys of this queue's hash slot).
-- KEYS[1..3] ready sets (high, default, low)   KEYS[4..6] their rotation cursors
-- KEYS[7] ready doorbell stream
-- ARGV[1] consumer group   ARGV[2] consumer   ARGV[3] count
-- Returns {doorbell's last entry id ("0-0" if none; only when nothing was read, else ""),
--          {{lane stream, entry id, {field, value, ...}}, ...}}.
local group, consumer = ARGV[1], ARGV[2]
local want = tonumber(ARGV[3])
local out = {}

-- Up to `count` new entries of one lane; false if it cannot be read (its key is gone).
local function read_lane(stream, count)
  local reply = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count,
                            'STREAMS', stream, '>')
  if type(reply) == 'table' and reply.err then
    if not string.find(reply.err, 'NOGROUP', 1, true) then
      return redis.error_reply(reply.err)
    end
    if redis.call('EXISTS', stream) == 0 then
      return false
    end
    redis.call('XGROUP', 'CREATE', stream, group, '0')
    reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count,
                       'STREAMS', stream, '>')
  end
  if not reply then
    return false
  end
  return reply[1][2]
end

for p = 1, 3 do
  if want <= 0 then break end
  local ready, rotation = KEYS[p], KEYS[p + 3]
  local cursor = redis.call('GET', rotation) or ''
  local turned = false
  while want > 0 do
    local size = redis.call('ZCARD', ready)
    if size == 0 then break end
    local share = math.max(1, math.floor(want / size))
    local lanes
    if cursor == '' then
      lanes = redis.call('ZRANGEBYLEX', ready, '-', '+', 'LIMIT', 0, want)
    else
      lanes = redis.call('ZRANGEBYLEX', ready, '(' .. cursor, '+', 'LIMIT', 0, want)
    end
    if #lanes == 0 then
      cursor = ''  -- past the last lane: round again from the first
    end
    for _, stream in ipairs(lanes) do
      local asked = math.min(share, want)
      local entries = read_lane(stream, asked)
      if type(entries) == 'table' and entries.err then
        return entries
      end
      cursor, turned = stream, true
      local got = entries and #entries or 0
      for e = 1, got do
        table.insert(out, {stream, entries[e][1], entries[e][2]})
      end
      want = want - got
      if got < asked then
        redis.call('ZREM', ready, stream)  -- no new entry left in this lane
      end
      if want <= 0 then break end
    end
  end
  if turned then
    redis.call('SET', rotation, cursor)
  end
end

local bell = ''
if #out == 0 then
  local last = redis.call('XREVRANGE', KEYS[7], '+', '-', 'COUNT', 1)
  bell = last[1] and last[1][1] or '0-0'
end
return {bell, out}
