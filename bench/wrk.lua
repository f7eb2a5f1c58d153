-- wrk script: POST a LiteralAI AddStep body (bench/steps.py) to /api/graphql.
--   BODY_FILE  a file with the body (default: $RUN_DIR/addstep.json)
--   UNIQUE=1   give every request its own step id (replace STEP_ID), so a
--              spool stores each write instead of recognising a repeat
--   VERSIONED=1  every request writes the same step (STEP_ID = HOT_STEP, or
--              "hot-step") with its own content (replace VERSION): one hot key
-- done() prints one JSON line with throughput, errors and latency percentiles.

local unique = os.getenv("UNIQUE") == "1"
local versioned = os.getenv("VERSIONED") == "1"
local hot = os.getenv("HOT_STEP") or "hot-step"
local body_file = os.getenv("BODY_FILE")
local template
local counter = 0
local run = os.time()
local tid = 0
local next_tid = 0

function setup(thread)
   thread:set("tid", next_tid)
   next_tid = next_tid + 1
end

function init(args)
   local f = assert(io.open(body_file, "r"))
   template = f:read("*a")
   f:close()
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["x-api-key"] = "bench-key"
   wrk.headers["x-client-name"] = "py-literal-client"
   wrk.headers["x-client-version"] = "0.1.201"
   wrk.path = "/api/graphql"
   if versioned then
      template = template:gsub("STEP_ID", hot)
   elseif not unique then
      wrk.body = template:gsub("STEP_ID", "bench-step")
   end
end

function request()
   if versioned then
      counter = counter + 1
      local body = template:gsub("VERSION", tid .. "-" .. counter)
      return wrk.format(nil, nil, nil, body)
   end
   if not unique then
      return wrk.format()
   end
   counter = counter + 1
   -- The run's start time keeps ids unique across runs into one spool.
   local body = template:gsub("STEP_ID", "s" .. run .. "-" .. tid .. "-" .. counter)
   return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      '{"requests":%d,"duration_us":%d,"rps":%.1f,"errors":%d,"non2xx":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      e.connect + e.read + e.write + e.timeout, e.status,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, latency.mean))
end
