-- POSTs real prompts as OpenAI chat bodies and prints one machine-readable summary line.
-- Args (after `--`): a file of request bodies, one compact JSON body per line (written by bench/workload.py).
-- Requests are pre-formatted in init() so request() costs wrk one table lookup.

local requests = {}
local n = 0
local i = 0
local threads = 0

function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end

function init(args)
  local path = args[1]
  for line in io.lines(path) do
    n = n + 1
    requests[n] = wrk.format("POST", "/v1/chat/completions", { ["Content-Type"] = "application/json" }, line)
  end
  -- each thread starts at its own place in the list, so threads do not send the same prompt in lockstep
  i = ((thread_id or 0) * 7919) % n
end

function request()
  i = i % n + 1
  return requests[i]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,"mean_us":%.1f,"max_us":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
