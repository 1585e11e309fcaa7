-- Replays a request file under wrk: one request a line, "METHOD<TAB>PATH<TAB>BODY"
-- (BODY may be empty). Each thread reads the file in init(), pre-formats every
-- request, and request() picks one at random, so a line's share of the load is
-- its share of the file.
--
-- Environment:
--   BENCH_KEY       the bearer key (required)
--   BENCH_REQUESTS  the request file
--   BENCH_UNIQUE    instead of the file: a text search whose query is this prefix
--                   plus a per-thread counter, so that no two requests share a
--                   query (no embedding cache hit)
--
-- done() prints one line, "BENCH_RESULT {json}", that bench/api.py parses:
-- requests, duration_us, errors (connect, read, write, timeout, and status =
-- answers outside 2xx/3xx) and latency percentiles in microseconds.

local next_id = 1

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

local requests_ = {}
local count = 0
local headers = {}
local unique = nil
local seq = 0

function init(args)
  headers["Authorization"] = "Bearer " .. assert(os.getenv("BENCH_KEY"), "BENCH_KEY is not set")
  headers["Content-Type"] = "application/json"
  math.randomseed(os.time() * 1000 + (id or 0))
  unique = os.getenv("BENCH_UNIQUE")
  if unique and unique ~= "" then
    return
  end
  unique = nil
  local file = assert(os.getenv("BENCH_REQUESTS"), "BENCH_REQUESTS is not set")
  for line in io.lines(file) do
    local method, path, body = line:match("^([^\t]+)\t([^\t]+)\t?(.*)$")
    if method then
      if body == "" then
        body = nil
      end
      count = count + 1
      requests_[count] = wrk.format(method, path, headers, body)
    end
  end
  assert(count > 0, "no requests in " .. file)
end

function request()
  if unique then
    seq = seq + 1
    local body = string.format('{"query":"%s %d-%d","k":10}', unique, id or 0, seq)
    return wrk.format("POST", "/contexts/search", headers, body)
  end
  return requests_[math.random(count)]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%d}}\n',
    summary.requests, summary.duration,
    e.connect, e.read, e.write, e.timeout, e.status,
    math.floor(latency:percentile(50)), math.floor(latency:percentile(90)),
    math.floor(latency:percentile(99)), math.floor(latency.max), math.floor(latency.mean)))
end
