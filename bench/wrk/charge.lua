-- Usage charges: POST /api/admin/v1/usage-charges, a unique Idempotency-Key each.
-- Thread n (= connection n) charges account ((n-1) mod k)+1 of BENCH_ACCOUNTS.
-- A charge is acknowledged when answered 201.
local dir = string.match(debug.getinfo(1, "S").source, "^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local bench = require("common")

local PATH = "/api/admin/v1/usage-charges"
local body

local function make()
  if body == nil then
    body = string.format(
      '{"account_id":"%s","amount":%s,"usecase":"bench"}',
      bench_account,
      bench.amount
    )
  end
  local key = bench.key()
  local headers = { ["Idempotency-Key"] = key }
  for k, v in pairs(bench.headers) do
    headers[k] = v
  end
  return wrk.format("POST", PATH, headers, body), "charge " .. key
end

setup = bench.setup
done = bench.done

function request()
  return bench.request(make)
end

function response(status, _headers, _body)
  bench.response(status)
  if status == 201 then
    bench_acked = bench_acked + 1
  end
end
