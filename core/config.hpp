// SPDX-License-Identifier: BSD-3-Clause
// Limits and timeouts of the HTTP core: a plain struct filled by the CLI layer. No Python here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace cppuvicorn::core {

struct MetricsSlot;

struct ServerConfig {
    double timeout_keep_alive = 5.0;  // seconds idle between requests (and before the first)
    // Seconds from the first byte of a request head to its end; <= 0: no limit. → 408 + close.
    double timeout_request_head = 10.0;
    // Seconds without a byte of a request body the server is ready to read; <= 0: no limit.
    // → 408 + close (or only close, once the response has started); the app hears disconnect.
    double timeout_body_read = 30.0;
    std::uint64_t max_body_size = 0;       // request body, bytes → 413 above it; 0: no limit
    std::size_t max_head_size = 65536;     // request line + headers, bytes → 431 above it
    std::size_t max_url_size = 65536;      // request target → 414 above it
    std::size_t max_header_count = 256;    // → 431 above it
    std::size_t read_high_water = 65536;   // pause reading when this much body is unconsumed
    std::size_t write_high_water = 65536;  // send() waits above this many unsent bytes
    // Responses of one loop pass leave together at its end, unless the first of them has
    // waited this long (nanoseconds; 0: always at the end): then what is ready leaves at the
    // next read's end. Bounds the delay a long pass adds to the responses made early in it.
    std::uint64_t flush_delay_max_ns = 1000000;
    bool date_header = true;
    // Preformatted "name: value\r\n" lines sent on every response after date (server + --header).
    std::string default_headers = "server: cppuvicorn\r\n";
    int backlog = 2048;
    // WebSocket sessions (Uvicorn's --ws-* options).
    std::uint64_t ws_max_size = 16777216;  // bytes per message (after decompression) → 1009
    std::size_t ws_max_queue = 32;         // received messages the app has not taken yet
    double ws_ping_interval = 20.0;        // seconds between keepalive pings; <= 0: none
    double ws_ping_timeout = 20.0;         // seconds to wait for the pong; <= 0: no timeout
    bool ws_per_message_deflate = true;    // offer permessage-deflate (RFC 7692)
    // This worker's counters in the supervisor's shared region (core/metrics.hpp); null: off.
    MetricsSlot* metrics = nullptr;
};

}  // namespace cppuvicorn::core
