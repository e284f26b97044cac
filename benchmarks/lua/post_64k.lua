-- wrk script: POST a 64 KiB body (65536 bytes) to the echo app; wrk adds Content-Length.
-- The body is a fixed, non-uniform pattern; run.py checks the server echoes exactly this
-- body (same generator) before measuring.

local parts = {}
for i = 0, 1023 do
   -- 64 bytes per line: 6-digit index, 57 letters, newline
   local ch = string.char(97 + (i % 26))
   parts[#parts + 1] = string.format("%06d", i) .. string.rep(ch, 57) .. "\n"
end
wrk.method = "POST"
wrk.body = table.concat(parts)
wrk.headers["Content-Type"] = "application/octet-stream"

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
