-- wrk script for bench/gateway_http.py: authenticated requests over HTTP/1.1 keep-alive.
--
--   wrk -t1 -c32 -d10s -s bench/gateway.lua http://127.0.0.1:PORT -- TOKEN IDS_FILE MODE
--
-- MODE "status": GET /v1/status/<a random service ID from IDS_FILE, one per line>;
-- MODE "healthz": GET /healthz. Both send the same Authorization header and pick an ID,
-- so the client side costs the same in both modes. done() prints one JSON line.

local ids = {}
local token = ""
local mode = "status"

function init(args)
  token = args[1]
  mode = args[3] or "status"
  for line in io.lines(args[2]) do
    ids[#ids + 1] = line
  end
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end

function request()
  local id = ids[math.random(#ids)]
  local path = "/v1/status/" .. id
  if mode == "healthz" then
    path = "/healthz"
  end
  return wrk.format("GET", path, { ["Authorization"] = "Bearer " .. token })
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
