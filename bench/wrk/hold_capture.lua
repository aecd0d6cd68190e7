-- Hold + capture pairs: POST /api/admin/v1/usage-holds {account_id, amount, usecase,
-- ttl_seconds} (201, the hold id in data.id), then, as the connection's next request,
-- POST /api/admin/v1/usage-holds/{id}/capture {amount}. A charge is acknowledged when
-- its capture is answered 200 (or 201). A hold answered but not yet captured when the
-- run ends is reported as bench_open_hold, for the Python side to release.
local dir = string.match(debug.getinfo(1, "S").source, "^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local bench = require("common")

local HOLDS = "/api/admin/v1/usage-holds"
local TTL = os.getenv("BENCH_TTL") or "3600"
local hold_body
local capture_body = string.format('{"amount":%s}', bench.amount)

bench_open_hold = nil -- the hold to capture next (answered 201, not captured yet)
bench_holds = 0 -- holds answered 201
bench.extra = { "bench_open_hold", "bench_holds" }

local function with_key(key)
  local headers = { ["Idempotency-Key"] = key }
  for k, v in pairs(bench.headers) do
    headers[k] = v
  end
  return headers
end

local function make()
  local key = bench.key()
  if bench_open_hold ~= nil then
    local path = HOLDS .. "/" .. bench_open_hold .. "/capture"
    return wrk.format("POST", path, with_key(key), capture_body),
      "capture " .. key .. " " .. bench_open_hold
  end
  if hold_body == nil then
    hold_body = string.format(
      '{"account_id":"%s","amount":%s,"usecase":"bench","ttl_seconds":%s}',
      bench_account,
      bench.amount,
      TTL
    )
  end
  return wrk.format("POST", HOLDS, with_key(key), hold_body), "hold " .. key
end

setup = bench.setup
done = bench.done

function request()
  return bench.request(make)
end

function response(status, _headers, body)
  bench.response(status)
  if bench_open_hold == nil then
    if status == 201 then
      bench_holds = bench_holds + 1
      bench_open_hold = string.match(body, '"id"%s*:%s*"([^"]+)"')
    end
  elseif status == 200 or status == 201 then
    bench_acked = bench_acked + 1
    bench_open_hold = nil
  else
    -- A capture refused: leave the hold for the Python side (it releases it) and start
    -- a new one, so that one refusal does not stall the connection.
    bench_failed_holds = (bench_failed_holds or "") .. bench_open_hold .. ","
    bench_open_hold = nil
  end
end

bench.extra[#bench.extra + 1] = "bench_failed_holds"
