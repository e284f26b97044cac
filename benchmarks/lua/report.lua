-- wrk script: machine-readable summary for benchmarks/run.py.
-- done() prints one line "WRK_JSON {...}" after wrk's normal report. Latencies are in
-- microseconds; percentiles come from wrk's own histogram (same as --latency).
-- Used directly for GET scenarios and loaded by post_64k.lua for the POST scenario.

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"err_connect": %d, "err_read": %d, "err_write": %d, "err_status": %d, "err_timeout": %d, ' ..
      '"lat_mean_us": %.2f, "lat_max_us": %d, "lat_p50_us": %d, "lat_p75_us": %d, ' ..
      '"lat_p90_us": %d, "lat_p99_us": %d, "lat_p999_us": %d}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency.max, latency:percentile(50), latency:percentile(75),
      latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
