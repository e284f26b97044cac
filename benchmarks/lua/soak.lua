-- wrk script for benchmarks/soak.py: rotates GET /, GET /json and POST /echo (1 KiB) against
-- benchmarks/apps/chaos.py and checks every response: status 200 and the exact body.
-- done() prints one "WRK_JSON {...}" line with wrk's error counters plus the responses this
-- script checked, the non-200 ones and the ones with a wrong body.

local hello = "Hello, world!"
local json = '{"message":"Hello, world!","id":1,"ok":true,"items":[1,2,3]}'
local lines = {}
for i = 0, 15 do
   -- 64 bytes per line: 4-digit index, 59 letters, newline
   lines[#lines + 1] = string.format("%04d", i) .. string.rep(string.char(97 + i % 26), 59) .. "\n"
end
local echo = table.concat(lines)

local threads = {}
local requests_list = nil
local n = 0
checked = 0
non200 = 0
bad = 0

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   requests_list = {
      wrk.format("GET", "/"),
      wrk.format("GET", "/json"),
      wrk.format("POST", "/echo", { ["Content-Type"] = "application/octet-stream" }, echo),
   }
end

function request()
   n = n + 1
   return requests_list[(n % 3) + 1]
end

function response(status, headers, body)
   checked = checked + 1
   if status ~= 200 then
      non200 = non200 + 1
   elseif body ~= hello and body ~= json and body ~= echo then
      bad = bad + 1
   end
end

function done(summary, latency, requests)
   local c, s, b = 0, 0, 0
   for _, t in ipairs(threads) do
      c = c + t:get("checked")
      s = s + t:get("non200")
      b = b + t:get("bad")
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_us": %d, "err_connect": %d, "err_read": %d, ' ..
      '"err_write": %d, "err_status": %d, "err_timeout": %d, "checked": %d, "non200": %d, ' ..
      '"bad_body": %d, "lat_p50_us": %d, "lat_p99_us": %d, "lat_max_us": %d}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
      c, s, b, latency:percentile(50), latency:percentile(99), latency.max))
end
