-- bodies.lua - wrk script for bench/load/run.sh: POSTs the JSON bodies of a file (one per
-- line, from prep.py) round robin, counts the answers by status (and the tokens /generate
-- reports with "details"), and prints one line
--   LOADJSON {"requests", "duration_s", "rps", "latency_ms": {"p50", "p90", "p99", ...},
--             "statuses": {"200": n, ...}, "socket_errors": {...}, "generated_tokens"}
-- for report.py.
--
--   wrk -t1 -c32 -d20s --timeout 300s -s bench/load/bodies.lua http://127.0.0.1:PORT/classify \
--       -- build/load/data/classify-4k.txt [RATE [paced|poisson]]
--
-- RATE (requests/s, default 0 = as fast as the connections go): requests leave on a schedule
-- of that rate, whichever connection is free takes the next slot, as wrk2's constant-throughput
-- mode does: "paced" spaces the slots evenly, "poisson" exponentially (a Poisson stream). A slot
-- missed because every connection was busy is not made up later. wrk's latency is measured from
-- the send, so it excludes the wait for the slot. Needs LuaJIT's ffi (Debian's wrk has it) for a
-- millisecond clock.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bodies_timespec;
int clock_gettime(int clk, bodies_timespec *ts);
]]
local ts = ffi.new("bodies_timespec")
local function now_ms()
   ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
   return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local threads = {}
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("id", counter)
   table.insert(threads, thread)
end

local bodies = {}
local idx = 0
local interval = 0
local poisson = false
local next_send = nil
statuses = {}
gen_tokens = 0

function init(args)
   local f = assert(io.open(args[1], "r"), "cannot open " .. tostring(args[1]))
   for line in f:lines() do
      if #line > 0 then bodies[#bodies + 1] = line end
   end
   f:close()
   assert(#bodies > 0, "no bodies in " .. args[1])
   local rate = tonumber(args[2] or "0") or 0
   poisson = args[3] == "poisson"
   math.randomseed(os.time() * 1000 + (id or 0))
   idx = math.random(#bodies) - 1
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   if rate > 0 then interval = 1000 / rate else delay = nil end
end

function request()
   idx = idx % #bodies + 1
   return wrk.format(nil, nil, nil, bodies[idx])
end

function delay()
   local t = now_ms()
   local slot = next_send or t
   if slot < t then slot = t end
   local gap = interval
   if poisson then gap = -interval * math.log(1 - math.random()) end
   next_send = slot + gap
   return slot - t
end

function response(status, headers, body)
   local k = tostring(status)
   statuses[k] = (statuses[k] or 0) + 1
   if body then -- /generate with "details": the tokens it generated
      local n = string.match(body, '"generated_tokens":(%d+)')
      if n then gen_tokens = gen_tokens + tonumber(n) end
   end
end

function done(summary, latency, requests)
   local all = {}
   local tokens = 0
   for _, t in ipairs(threads) do
      tokens = tokens + (t:get("gen_tokens") or 0)
      local s = t:get("statuses")
      if s then
         for k, v in pairs(s) do all[k] = (all[k] or 0) + v end
      end
   end
   local parts = {}
   for k, v in pairs(all) do parts[#parts + 1] = string.format('"%s": %d', k, v) end
   local e = summary.errors
   local secs = summary.duration / 1e6
   io.write(string.format(
      'LOADJSON {"requests": %d, "duration_s": %.3f, "rps": %.3f, "bytes": %d, ' ..
      '"latency_ms": {"p50": %.3f, "p90": %.3f, "p99": %.3f, "mean": %.3f, "max": %.3f, "stdev": %.3f}, ' ..
      '"statuses": {%s}, "socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, ' ..
      '"non2xx": %d, "generated_tokens": %d}\n',
      summary.requests, secs, summary.requests / secs, summary.bytes,
      latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
      latency.mean / 1000, latency.max / 1000, latency.stdev / 1000,
      table.concat(parts, ", "), e.connect, e.read, e.write, e.timeout, e.status, tokens))
end
