-- Shared by get.lua and put.lua: thread ids, and one JSON line of results from done().
-- wrk runs every script in one Lua state per thread plus a main state for setup() and done().
local M = {}
local threads = {}

function M.setup(thread)
   thread:set("id", #threads + 1)
   table.insert(threads, thread)
end

local function statuses_json()
   local merged = {}
   for _, thread in ipairs(threads) do
      local counted = thread:get("statuses")
      if type(counted) == "table" then
         for status, n in pairs(counted) do
            merged[status] = (merged[status] or 0) + n
         end
      end
   end
   local parts = {}
   for status, n in pairs(merged) do
      parts[#parts + 1] = string.format('"%d": %d', status, n)
   end
   return "{" .. table.concat(parts, ", ") .. "}"
end

-- Read by bench/wrk.py: the line starting with BENCH_JSON (times in microseconds).
function M.done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"duration_us": %d, "requests": %d, "bytes": %d, '
         .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
         .. '"latency_us": {"min": %d, "mean": %.1f, "max": %d, "p50": %d, "p90": %d, '
         .. '"p99": %d, "p999": %d}, "statuses": %s}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9), statuses_json()))
end

return M
