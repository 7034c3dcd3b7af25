-- wrk script: signed webhook deliveries, each with a new X-GitHub-Delivery id.
-- The signature covers only the body, so one body and one signature serve every
-- request; the delivery id header changes per request (a new id = a new row).
--
-- Environment: BODY_FILE (payload path), SIGNATURE (sha256=…), EVENT
-- (default pull_request), RUN_ID (prefix that makes ids unique across runs).

local body_file = os.getenv("BODY_FILE")
local f = assert(io.open(body_file, "rb"), "cannot open BODY_FILE")
local body = f:read("*all")
f:close()

local signature = os.getenv("SIGNATURE")
local event = os.getenv("EVENT") or "pull_request"
local run_id = os.getenv("RUN_ID") or tostring(os.time())

local threads = {}
local thread_counter = 0

function setup(thread)
  thread_counter = thread_counter + 1
  thread:set("tid", thread_counter)
  table.insert(threads, thread)
end

local counter = 0
local headers = {
  ["Content-Type"] = "application/json",
  ["User-Agent"] = "GitHub-Hookshot/bench",
  ["X-GitHub-Event"] = event,
  ["X-Hub-Signature-256"] = signature,
}

function request()
  counter = counter + 1
  headers["X-GitHub-Delivery"] = string.format("%s-%d-%d", run_id, tid, counter)
  return wrk.format("POST", "/api/github/webhooks", headers, body)
end

function done(summary, latency, requests)
  -- One JSON line for benches/intake.sh to read.
  io.write(string.format(
    '{"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,"errors":%d,"non2xx":%d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
