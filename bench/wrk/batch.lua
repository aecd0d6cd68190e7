-- Batches: POST /api/admin/v1/usage-charges/batch {"charges": [{account_id, amount,
-- usecase, idempotency_key}, ... BENCH_BATCH items]}, answered 200 with
-- data.items[i].status "charged". The request takes no Idempotency-Key; every item of a thread charges its account; item i of
-- the request with key K has the idempotency_key K-i. Acknowledged charges are the
-- items whose status is "charged" in a 200 answer.
local dir = string.match(debug.getinfo(1, "S").source, "^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local bench = require("common")

local PATH = "/api/admin/v1/usage-charges/batch"
local SIZE = tonumber(os.getenv("BENCH_BATCH") or "1000")

bench_items = 0 -- items answered, any status
bench.extra = { "bench_items" }

local function make()
  local key = bench.key()
  local items = {}
  for i = 1, SIZE do
    items[i] = string.format(
      '{"account_id":"%s","amount":%s,"usecase":"bench","idempotency_key":"%s-%d"}',
      bench_account,
      bench.amount,
      key,
      i
    )
  end
  -- The request as a whole takes no Idempotency-Key: each item has its own.
  local body = '{"charges":[' .. table.concat(items, ",") .. "]}"
  return wrk.format("POST", PATH, bench.headers, body), "batch " .. key
end

setup = bench.setup
done = bench.done

function request()
  return bench.request(make)
end

function response(status, _headers, body)
  bench.response(status)
  if status == 200 then
    local _, charged = string.gsub(body, '"status"%s*:%s*"charged"', "")
    local _, items = string.gsub(body, '"status"%s*:', "")
    bench_acked = bench_acked + charged
    bench_items = bench_items + items
  end
end
