-- Shared by the billfold wrk scripts (bench/usage_wrk.py runs them; see its docstring).
--
-- wrk runs with one connection per thread (-t N -c N), so within a thread the requests
-- and responses alternate and the thread knows which request is in flight. Each thread
-- counts what it saw; done() prints one JSON line per thread and one for the run, each
-- starting with "BENCHJSON ", for the Python side to parse. A request that got no
-- response (in flight when wrk stopped, or lost with its connection) is reported as
-- "in doubt" so that the Python side can resolve it by replaying its Idempotency-Key.
--
-- Configuration comes from the environment: BENCH_RUN (a tag making the keys unique),
-- BENCH_ACCOUNTS (comma-separated account ids; thread n takes the ((n-1) mod k)+1-th),
-- BENCH_ADMIN_KEY, BENCH_AMOUNT, and per script BENCH_TTL / BENCH_BATCH.

local M = {}

M.run = os.getenv("BENCH_RUN") or "run"
M.amount = os.getenv("BENCH_AMOUNT") or "0.0001"
M.accounts = {}
for id in string.gmatch(os.getenv("BENCH_ACCOUNTS") or "", "[^,]+") do
  M.accounts[#M.accounts + 1] = id
end
M.headers = {
  ["Authorization"] = "Bearer " .. (os.getenv("BENCH_ADMIN_KEY") or ""),
  ["Content-Type"] = "application/json",
}

-- Per-thread state: globals of each wrk thread's own Lua state, so that done() (in the
-- main state) can read them with thread:get().
bench_tid = 0 -- set by setup()
bench_account = nil -- set by setup()
bench_calls = 0 -- request() calls
bench_counter = 0 -- keys made
bench_sent = 0 -- requests handed to wrk to send
bench_responses = 0
bench_acked = 0 -- charges acknowledged (as each script defines it)
bench_statuses = {} -- "201" -> count
bench_doubt = {} -- requests without a response: "kind key [hold id]"
bench_pending = nil -- the request in flight, as a doubt entry

-- Main state: the threads, for done().
local threads = {}

function M.setup(thread)
  local n = #threads + 1
  threads[n] = thread
  thread:set("bench_tid", n)
  if #M.accounts > 0 then
    thread:set("bench_account", M.accounts[(n - 1) % #M.accounts + 1])
  end
end

function M.key()
  bench_counter = bench_counter + 1
  return string.format("%s-%d-%d", M.run, bench_tid, bench_counter)
end

-- wrk calls request() once on the first thread's state before any thread runs, only to
-- see how many requests it returns; that one is never sent. `make` returns
-- (request, doubt entry) and should change the thread's state only as if it were sent.
function M.request(make)
  bench_calls = bench_calls + 1
  if bench_tid == 1 and bench_calls == 1 then
    return wrk.format("GET", "/readyz")
  end
  if bench_pending ~= nil then
    -- The previous request never got its response (its connection broke).
    bench_doubt[#bench_doubt + 1] = bench_pending
  end
  local req, entry = make()
  bench_pending = entry
  bench_sent = bench_sent + 1
  return req
end

function M.response(status)
  bench_pending = nil
  bench_responses = bench_responses + 1
  local s = tostring(status)
  bench_statuses[s] = (bench_statuses[s] or 0) + 1
end

local function quote(s)
  return '"' .. string.gsub(tostring(s), '[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end) .. '"'
end

local function encode(value)
  local t = type(value)
  if t == "table" then
    if #value > 0 or next(value) == nil then
      local parts = {}
      for i = 1, #value do
        parts[i] = encode(value[i])
      end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local parts = {}
    for k, v in pairs(value) do
      parts[#parts + 1] = quote(k) .. ":" .. encode(v)
    end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif t == "number" then
    return string.format("%.17g", value)
  elseif t == "nil" then
    return "null"
  elseif t == "boolean" then
    return tostring(value)
  end
  return quote(value)
end

-- Extra per-thread fields a script reports in done(): names of its globals.
M.extra = {}

function M.done(summary, latency, _requests)
  for n, thread in ipairs(threads) do
    local doubt = thread:get("bench_doubt") or {}
    local line = {
      tid = n,
      account = thread:get("bench_account"),
      sent = thread:get("bench_sent"),
      responses = thread:get("bench_responses"),
      acked = thread:get("bench_acked"),
      statuses = thread:get("bench_statuses") or {},
      doubt = doubt,
    }
    local pending = thread:get("bench_pending")
    if pending ~= nil then
      doubt[#doubt + 1] = pending
    end
    for _, name in ipairs(M.extra) do
      line[name] = thread:get(name)
    end
    io.write("BENCHJSON ", encode({ thread = line }), "\n")
  end
  local percentiles = {}
  for _, p in ipairs({ 50, 90, 99, 99.9 }) do
    percentiles[tostring(p)] = latency:percentile(p)
  end
  io.write(
    "BENCHJSON ",
    encode({
      summary = {
        duration_us = summary.duration,
        requests = summary.requests,
        bytes = summary.bytes,
        errors = summary.errors,
        latency_us = {
          min = latency.min,
          max = latency.max,
          mean = latency.mean,
          stdev = latency.stdev,
          percentiles = percentiles,
        },
      },
    }),
    "\n"
  )
end

-- Load this module from the scenario script's own folder.
return M
