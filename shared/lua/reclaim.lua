-- Hand the entries of dead workers back to the queue.
-- Entries idle past the visibility timeout are claimed, re-added as fresh entries that
-- name the old id ("prev") and count deliveries ("n"), and the old entries removed.
-- Entries already delivered max_deliveries times are poison pills: they stay pending
-- (owned by the reclaimer) and are returned, so the caller can FAIL their jobs first.
-- KEYS[1] stream
-- ARGV[1] consumer group  ARGV[2] reclaimer consumer name
-- ARGV[3] min idle ms     ARGV[4] max entries      ARGV[5] max deliveries
-- Returns {requeued count, {poison entry id, job id, ...}}
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0',
                           'COUNT', ARGV[4])
local requeued, poison = 0, {}
for _, entry in ipairs(claimed[2]) do
  local id, fields = entry[1], entry[2]
  if not fields then
    -- the entry was deleted from the stream while pending: nothing to run
    redis.call('XACK', KEYS[1], ARGV[1], id)
  else
    local f = {}
    for i = 1, #fields, 2 do f[fields[i]] = fields[i + 1] end
    local delivered = tonumber(f['n'] or '1')
    if delivered >= tonumber(ARGV[5]) then
      table.insert(poison, id)
      table.insert(poison, f['job'])
    else
      redis.call('XADD', KEYS[1], '*', 'job', f['job'], 'n', delivered + 1, 'prev', id)
      redis.call('XACK', KEYS[1], ARGV[1], id)
      redis.call('XDEL', KEYS[1], id)
      requeued = requeued + 1
    end
  end
end
return {requeued, poison}
