-- wrk script: POST /predict with a real customer id per request, cycling
-- through the ids file given after `--`; prints a JSON summary at the end.
local ids = {}
local requests = {}
local i = 0

local threads = 0

function setup(thread)
  thread:set("offset", threads * 997)
  threads = threads + 1
end

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then ids[#ids + 1] = line end
  end
  local headers = { ["Content-Type"] = "application/json" }
  for k, id in ipairs(ids) do
    requests[k] = wrk.format("POST", wrk.path, headers,
      '{"customer_id": "' .. id .. '"}')
  end
  -- Threads start at different ids so they do not hit the same key together.
  i = (offset or 0) % #requests
end

function request()
  i = (i % #requests) + 1
  return requests[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d}, "latency_us": {"p50": %d, "p90": %d, "p99": %d, ' ..
    '"p999": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
