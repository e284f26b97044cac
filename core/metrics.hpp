// SPDX-License-Identifier: BSD-3-Clause
// Metrics: one worker's counters, in a slot of a shared memory region the supervisor creates
// and reads (cli/src/metrics.hpp serves them to Prometheus). The worker is the only writer of
// its slot: a counter update is a relaxed load and store (no locked instruction), readers see
// each 64-bit value whole. Gauges are kept as two monotonic counters (opened/closed), so a
// dead worker's slot can be folded into the totals without leaving its open connections
// behind. When metrics are off the pointer is null and every hook is one predictable branch.
// No Python here.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <iterator>

namespace cppuvicorn::core {

// Upper bounds of the request duration histogram buckets, in nanoseconds (0.5 ms … 10 s; the
// last bucket, +Inf, is implied).
inline constexpr std::uint64_t kDurationBoundsNs[] = {
    500'000,       1'000'000,     2'500'000,     5'000'000,     10'000'000,
    25'000'000,    50'000'000,    100'000'000,   250'000'000,   500'000'000,
    1'000'000'000, 2'500'000'000, 5'000'000'000, 10'000'000'000};
inline constexpr std::size_t kDurationBucketCount = std::size(kDurationBoundsNs) + 1;

// Indices of the values in a slot.
enum MetricIndex : std::size_t {
    kRequests1xx,  // requests whose response started, by status class (…5xx = +4)
    kRequests2xx,
    kRequests3xx,
    kRequests4xx,
    kRequests5xx,
    kRequestsStarted,   // request heads read (in flight = started - finished)
    kRequestsFinished,  // requests released (response complete or connection lost)
    kDurationSumNs,     // sum of the observed durations, nanoseconds
    kConnectionsOpened,
    kConnectionsClosed,
    kWebSocketsOpened,  // sessions accepted (101 sent)
    kWebSocketsClosed,
    kBytesReceived,
    kBytesSent,
    kLimitRejections,  // 503s sent because of --limit-concurrency
    kProtocolErrors,   // requests core answered itself (400, 413, 414, 431, …)
    kDurationBucket0,  // kDurationBucketCount non-cumulative histogram buckets follow
    kMetricCount = kDurationBucket0 + kDurationBucketCount,
};

struct alignas(64) MetricsSlot {
    std::atomic<std::uint64_t> values[kMetricCount];

    // Single writer: no read-modify-write instruction needed.
    void add(std::size_t i, std::uint64_t n = 1) noexcept {
        values[i].store(values[i].load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }
    std::uint64_t get(std::size_t i) const noexcept {
        return values[i].load(std::memory_order_relaxed);
    }
    // A request's response started with `status` and the request ended `ns` after its head.
    void observe_request(int status, std::uint64_t ns) noexcept {
        int cls = status / 100;
        if (cls >= 1 && cls <= 5) add(kRequests1xx + static_cast<std::size_t>(cls - 1));
        add(kDurationSumNs, ns);
        std::size_t b = 0;
        while (b < std::size(kDurationBoundsNs) && ns > kDurationBoundsNs[b])
            ++b;
        add(kDurationBucket0 + b);
    }
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

// The shared region: a header, then kMetricsMaxSlots slots.
inline constexpr std::uint64_t kMetricsMagic = 0x6370707576696d31;  // "cppuvim1"
inline constexpr std::size_t kMetricsMaxSlots = 256;

struct alignas(64) MetricsHeader {
    std::uint64_t magic;
    std::uint64_t slot_count;
    std::uint64_t slot_size;
};

inline constexpr std::size_t metrics_region_size() {
    return sizeof(MetricsHeader) + kMetricsMaxSlots * sizeof(MetricsSlot);
}

inline MetricsSlot* metrics_slots(void* region) {
    return reinterpret_cast<MetricsSlot*>(static_cast<char*>(region) + sizeof(MetricsHeader));
}

// Maps the region behind `fd` (inherited from the supervisor) and returns slot `index`, or
// nullptr if the fd is not such a region or the index is out of range. The mapping lives as
// long as the process.
MetricsSlot* attach_metrics_slot(int fd, std::size_t index);

}  // namespace cppuvicorn::core
