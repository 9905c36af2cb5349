-- wrk script: POST /v1/registrations with a new person on every request.
--
-- Bodies come from templates written by benchmarks/bodies.py (BENCH_TEMPLATES): one line
-- per template, "<json before the serial>\t<json after the serial>", where the serial is
-- the last six digits of the identity number. Request k of the run (k counted across all
-- threads from BENCH_OFFSET) uses template k % T with serial floor(k / T), so no person
-- is sent twice as long as the run stays under T * 1,000,000 requests.
--
-- done() writes a JSON report to BENCH_REPORT: wrk's summary and latency percentiles,
-- answers counted by HTTP status, and answers per wall-clock second (os.time(), Unix
-- seconds) and status: the timeline shows what happens during a stall. The timeline is
-- one flat table keyed "<second>:<status>": wrk's copy of a thread's table to the main
-- state crashes on nested tables.

local threads = {}
local next_index = 0

function setup(thread)
  thread:set("thread_index", next_index)
  next_index = next_index + 1
  table.insert(threads, thread)
end

local templates = {}
local headers = {}
local counter = 0
local offset = 0
local thread_count = 1
statuses = {}
timeline = {}

function init(args)
  local path = os.getenv("BENCH_TEMPLATES")
  local file = assert(io.open(path, "r"), "cannot open BENCH_TEMPLATES")
  for line in file:lines() do
    local tab = string.find(line, "\t", 1, true)
    if tab then
      table.insert(templates, { string.sub(line, 1, tab - 1), string.sub(line, tab + 1) })
    end
  end
  file:close()
  assert(#templates > 0, "no templates in " .. path)
  offset = tonumber(os.getenv("BENCH_OFFSET") or "0")
  thread_count = tonumber(os.getenv("BENCH_THREADS") or "1")
  headers["Content-Type"] = "application/json"
  headers["X-Channel"] = os.getenv("BENCH_CHANNEL") or "web"
end

function request()
  local k = offset + thread_index + thread_count * counter
  counter = counter + 1
  local n = #templates
  local t = templates[(k % n) + 1]
  local serial = math.floor(k / n) % 1000000
  return wrk.format("POST", nil, headers, t[1] .. string.format("%06d", serial) .. t[2])
end

function response(status, _headers, _body)
  local code = tostring(status)
  statuses[code] = (statuses[code] or 0) + 1
  local key = os.time() .. ":" .. code
  timeline[key] = (timeline[key] or 0) + 1
end

local function encode(value)
  if type(value) == "table" then
    local parts = {}
    for k, v in pairs(value) do
      table.insert(parts, string.format("%q:%s", tostring(k), encode(v)))
    end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  if type(value) == "number" and (value ~= value or value == math.huge or value == -math.huge) then
    return "null"
  end
  return tostring(value)
end

function done(summary, latency, _requests)
  local all_statuses, all_timeline = {}, {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      all_statuses[status] = (all_statuses[status] or 0) + n
    end
    for key, n in pairs(thread:get("timeline")) do
      all_timeline[key] = (all_timeline[key] or 0) + n
    end
  end
  local report = {
    duration_us = summary.duration,
    requests = summary.requests,
    bytes = summary.bytes,
    errors = summary.errors,
    latency_us = {
      min = latency.min, mean = latency.mean, max = latency.max, stdev = latency.stdev,
      p50 = latency:percentile(50), p90 = latency:percentile(90),
      p99 = latency:percentile(99), p999 = latency:percentile(99.9),
    },
    statuses = all_statuses,
    timeline = all_timeline,
  }
  local out = assert(io.open(os.getenv("BENCH_REPORT"), "w"))
  out:write(encode(report))
  out:close()
end
