-- Store ARGV[2] under KEYS[1] with generation ARGV[1] and TTL ARGV[3] ms,
-- unless the entry already there has the same or a newer generation.
-- When stored, publish ARGV[5] ("<id> <generation>") on channel ARGV[4], so
-- that every instance drops older copies from its in-process tier.
local cur = redis.call('GET', KEYS[1])
if cur then
  local gen = tonumber(string.match(cur, '^(%-?%d+)|'))
  if gen and gen >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'PX', ARGV[3])
if ARGV[4] then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 1
