-- GCRA (generic cell rate algorithm) for one API key, on Redis's clock, so
-- every replica shares one limit. At most `quota` requests per `window`, and
-- never more than `quota` at once; one more is allowed every window/quota.
--
-- KEYS[1]  the key's theoretical arrival time (TAT), in ms
-- ARGV[1]  emission interval in ms (window / quota)
-- ARGV[2]  window in ms
-- Returns {allowed (1|0), remaining, ms until the quota is whole again,
--          ms until the next request is allowed (0 when allowed)}.
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
    tat = now
end
local new_tat = tat + interval
local allow_at = new_tat - window
if now < allow_at then
    return {0, 0, tat - now, allow_at - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return {1, math.floor((now + window - new_tat) / interval), new_tat - now, 0}
