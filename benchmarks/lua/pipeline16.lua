-- wrk script: HTTP/1.1 pipelining, 16 GET / requests written back to back per round trip
-- (TechEmpower's "plaintext" style). wrk counts every response; latency is per batch.

local depth = 16
local batch

function init(args)
   local r = {}
   for i = 1, depth do
      r[i] = wrk.format("GET", "/")
   end
   batch = table.concat(r)
end

function request()
   return batch
end

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
