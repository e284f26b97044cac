// SPDX-License-Identifier: BSD-3-Clause
// The supervisor's side of `--metrics-port`: the shared memory region the workers count into
// (one slot per worker, see core/metrics.hpp), the totals of workers that are gone, and a
// small HTTP endpoint on the supervisor's libuv loop that serves `GET /metrics` in the
// Prometheus text format 0.0.4. No request ever crosses a process boundary: a scrape sums
// the slots. No Python here.
#pragma once

#include "core/metrics.hpp"

#include <uv.h>

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <vector>

namespace cppuvicorn::cli {

// What one scrape reports: every worker value summed (live slots and the retired totals),
// plus what the supervisor counts itself.
struct MetricsSnapshot {
    std::uint64_t values[core::kMetricCount] = {};
    std::uint64_t worker_restarts = 0;  // workers started to replace one that exited or was
                                        // replaced (died, killed as blocked, SIGHUP restart)
    std::uint64_t blocked_kills = 0;    // workers killed because their event loop was blocked
    std::uint64_t workers = 0;          // workers currently running
};

// The Prometheus text exposition (format 0.0.4) of a snapshot.
std::string render_prometheus(const MetricsSnapshot& s);

// The region: created here (memfd, MAP_SHARED), inherited by every worker as an fd.
class MetricsRegion {
  public:
    MetricsRegion() = default;
    ~MetricsRegion();
    MetricsRegion(const MetricsRegion&) = delete;
    MetricsRegion& operator=(const MetricsRegion&) = delete;

    // Creates and maps the region; false (errno set) on failure.
    bool create();
    int fd() const { return fd_; }
    // A zeroed slot for a new worker, or -1 if all are taken (that worker then counts nothing).
    int acquire_slot();
    // The worker of `slot` has exited: fold its counters into the retired totals (what it had
    // open or in flight counts as closed/finished) and free the slot.
    void release_slot(int slot);
    core::MetricsSlot* slot(int index) const { return core::metrics_slots(region_) + index; }
    // The sum of the retired totals and every slot in use.
    void sum_into(MetricsSnapshot& s) const;

  private:
    void* region_ = nullptr;
    int fd_ = -1;
    std::vector<bool> used_;
    std::uint64_t retired_[core::kMetricCount] = {};
};

// The region, the supervisor's own counters and the HTTP endpoint.
class SupervisorMetrics {
  public:
    SupervisorMetrics(uv_loop_t* loop, std::function<std::size_t()> live_workers);
    ~SupervisorMetrics();
    SupervisorMetrics(const SupervisorMetrics&) = delete;
    SupervisorMetrics& operator=(const SupervisorMetrics&) = delete;

    // Creates the region and listens on host:port (port 0: any free port). Returns "" or an
    // error message for the log.
    std::string start(const std::string& host, int port);
    int bound_port() const { return bound_port_; }
    // Closes the listener and any scrape in progress (the loop runs the close callbacks).
    void close();

    MetricsRegion& region() { return region_; }
    void note_restart() { ++restarts_; }
    void note_blocked_kill() { ++blocked_kills_; }
    MetricsSnapshot snapshot() const;

  private:
    struct Client;
    static void on_connection(uv_stream_t* server, int status) noexcept;
    void respond(Client* c);
    void drop(Client* c);

    uv_loop_t* loop_;
    std::function<std::size_t()> live_workers_;
    MetricsRegion region_;
    uv_tcp_t listener_{};
    bool listening_ = false;
    int bound_port_ = 0;
    std::uint64_t restarts_ = 0;
    std::uint64_t blocked_kills_ = 0;
    std::list<std::unique_ptr<Client>> clients_;
};

}  // namespace cppuvicorn::cli
