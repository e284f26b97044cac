// SPDX-License-Identifier: BSD-3-Clause
#include "cli/src/supervisor.hpp"

#include "cli/src/metrics.hpp"

#include <uv.h>

#include <algorithm>
#include <arpa/inet.h>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <list>
#include <memory>
#include <netinet/in.h>
#include <signal.h>
#include <string>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <utility>

extern char** environ;

namespace cppuvicorn::cli {

namespace {

void log_line(const char* level, const std::string& msg) {
    // Uvicorn's default format: the level name and a colon, padded to 9 characters.
    std::string prefix = std::string(level) + ":";
    prefix.resize(9, ' ');
    std::fprintf(stderr, "%s %s\n", prefix.c_str(), msg.c_str());
    std::fflush(stderr);
}

std::uint64_t now_ms() {
    return uv_hrtime() / 1000000;
}

std::string fmt_seconds(double s) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%gs", s);
    return buf;
}

struct Worker;

class Supervisor {
  public:
    explicit Supervisor(const SupervisorOptions& o) : opts_(o) {}
    int run();

    // Called from the libuv trampolines.
    void on_exit(Worker* w, int64_t status, int term_signal);
    void on_beat(Worker* w, const char* data, ssize_t n);
    void on_signal(int signum);
    void on_check();

  private:
    bool bind_socket();
    Worker* spawn();
    void terminate(Worker* w, const char* verb);
    void stop_all();
    void force_all();
    void start_rolling_restart();
    void continue_rolling_restart();
    std::size_t live_workers() const;
    void maybe_finish();

    SupervisorOptions opts_;
    uv_loop_t loop_{};
    uv_signal_t signals_[5]{};
    uv_timer_t check_timer_{};
    int listen_fd_ = -1;
    std::list<std::unique_ptr<Worker>> workers_;
    bool stopping_ = false;
    bool draining_ = false;
    std::uint64_t drain_until_ = 0;
    int exit_code_ = 0;
    // Rolling restart: old workers still to replace, and the new one we wait for.
    std::list<Worker*> restart_queue_;
    Worker* restart_new_ = nullptr;
    Worker* restart_old_ = nullptr;
    std::uint64_t restart_deadline_ = 0;
    std::unique_ptr<SupervisorMetrics> metrics_;  // --metrics-port
};

struct Worker {
    Supervisor* sup = nullptr;
    uv_process_t proc{};
    uv_pipe_t beat{};
    int pid = 0;
    bool ready = false;     // sent 'R': lifespan startup done, serving
    bool stopping = false;  // we asked it to stop (SIGTERM)
    bool retiring = false;  // it stops for good (SIGTTOU, rolling restart): no respawn
    bool blocked = false;   // killed because its event loop stopped beating
    bool exited = false;
    int open_handles = 0;
    std::uint64_t last_beat = 0;
    std::uint64_t kill_at = 0;  // SIGKILL deadline, 0 = none
    int metrics_slot = -1;      // its slot in the metrics region
    char buf[256];
};

void close_worker_handles(Worker* w) {
    auto on_close = [](uv_handle_t* h) noexcept {
        auto* worker = static_cast<Worker*>(h->data);
        --worker->open_handles;
    };
    if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&w->proc))) {
        uv_close(reinterpret_cast<uv_handle_t*>(&w->proc), on_close);
    }
    if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&w->beat))) {
        uv_close(reinterpret_cast<uv_handle_t*>(&w->beat), on_close);
    }
}

bool Supervisor::bind_socket() {
    if (opts_.fd >= 0) {
        listen_fd_ = opts_.fd;
        // Workers get it as fd 3 only: a second inherited copy would keep the socket open
        // after they stop listening.
        fcntl(listen_fd_, F_SETFD, FD_CLOEXEC);
        sockaddr_storage ss{};
        socklen_t len = sizeof ss;
        getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len);
        log_line("INFO", "cppuvicorn running on socket fd " + std::to_string(listen_fd_) +
                             " (Press CTRL+C to quit)");
        return true;
    }
    if (!opts_.uds.empty()) {
        listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, opts_.uds.c_str(), sizeof addr.sun_path - 1);
        unlink(opts_.uds.c_str());
        if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
            listen(listen_fd_, opts_.backlog) != 0) {
            log_line("ERROR", "[Errno " + std::to_string(errno) + "] " + std::strerror(errno));
            return false;
        }
        chmod(opts_.uds.c_str(), 0666);
        log_line("INFO",
                 "cppuvicorn running on unix socket " + opts_.uds + " (Press CTRL+C to quit)");
        return true;
    }
    bool v6 = opts_.host.find(':') != std::string::npos;
    listen_fd_ = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_storage ss{};
    socklen_t len;
    int rc;
    if (v6) {
        auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
        rc = uv_ip6_addr(opts_.host.c_str(), opts_.port, a);
        len = sizeof *a;
    } else {
        auto* a = reinterpret_cast<sockaddr_in*>(&ss);
        rc = uv_ip4_addr(opts_.host.c_str(), opts_.port, a);
        len = sizeof *a;
    }
    if (rc != 0 || bind(listen_fd_, reinterpret_cast<sockaddr*>(&ss), len) != 0 ||
        listen(listen_fd_, opts_.backlog) != 0) {
        int err = rc != 0 ? EINVAL : errno;
        log_line("ERROR", "[Errno " + std::to_string(err) + "] " + std::strerror(err));
        return false;
    }
    len = sizeof ss;
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len);
    int port = v6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                  : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    std::string host = v6 ? "[" + opts_.host + "]" : opts_.host;
    log_line("INFO", "cppuvicorn running on " + opts_.scheme + "://" + host + ":" +
                         std::to_string(port) + " (Press CTRL+C to quit)");
    return true;
}

Worker* Supervisor::spawn() {
    auto w = std::make_unique<Worker>();
    w->sup = this;
    uv_pipe_init(&loop_, &w->beat, 0);
    w->beat.data = w.get();
    w->proc.data = w.get();

    std::vector<char*> args;
    for (const auto& a : opts_.worker_argv)
        args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    std::vector<std::string> env_store;
    for (char** e = environ; *e != nullptr; ++e) {
        if (std::strncmp(*e, "CPPUVICORN_LISTEN_FD=", 21) == 0 ||
            std::strncmp(*e, "CPPUVICORN_HEARTBEAT_FD=", 24) == 0 ||
            std::strncmp(*e, "CPPUVICORN_METRICS_", 19) == 0) {
            continue;
        }
        env_store.emplace_back(*e);
    }
    env_store.emplace_back("CPPUVICORN_LISTEN_FD=3");
    env_store.emplace_back("CPPUVICORN_HEARTBEAT_FD=4");
    if (metrics_) w->metrics_slot = metrics_->region().acquire_slot();
    if (w->metrics_slot >= 0) {
        env_store.emplace_back("CPPUVICORN_METRICS_FD=5");
        env_store.emplace_back("CPPUVICORN_METRICS_SLOT=" + std::to_string(w->metrics_slot));
    }
    std::vector<char*> env;
    for (auto& e : env_store)
        env.push_back(e.data());
    env.push_back(nullptr);

    uv_stdio_container_t stdio[6];
    stdio[0].flags = UV_INHERIT_FD;
    stdio[0].data.fd = 0;
    stdio[1].flags = UV_INHERIT_FD;
    stdio[1].data.fd = 1;
    stdio[2].flags = UV_INHERIT_FD;
    stdio[2].data.fd = 2;
    stdio[3].flags = UV_INHERIT_FD;
    stdio[3].data.fd = listen_fd_;
    stdio[4].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
    stdio[4].data.stream = reinterpret_cast<uv_stream_t*>(&w->beat);
    stdio[5].flags = UV_INHERIT_FD;
    stdio[5].data.fd = w->metrics_slot >= 0 ? metrics_->region().fd() : -1;

    uv_process_options_t po{};
    po.file = args[0];
    po.args = args.data();
    po.env = env.data();
    po.stdio = stdio;
    po.stdio_count = w->metrics_slot >= 0 ? 6 : 5;
    po.exit_cb = [](uv_process_t* p, int64_t status, int sig) noexcept {
        auto* worker = static_cast<Worker*>(p->data);
        worker->sup->on_exit(worker, status, sig);
    };
    w->open_handles = 2;
    int rc = uv_spawn(&loop_, &w->proc, &po);
    if (rc != 0) {
        log_line("ERROR", std::string("Could not start a worker: ") + uv_strerror(rc));
        if (metrics_) metrics_->region().release_slot(w->metrics_slot);
        w->exited = true;
        close_worker_handles(w.get());
        workers_.push_back(std::move(w));
        return nullptr;
    }
    w->pid = w->proc.pid;
    w->last_beat = now_ms();
    uv_read_start(
        reinterpret_cast<uv_stream_t*>(&w->beat),
        [](uv_handle_t* h, std::size_t, uv_buf_t* buf) noexcept {
            auto* worker = static_cast<Worker*>(h->data);
            *buf = uv_buf_init(worker->buf, sizeof worker->buf);
        },
        [](uv_stream_t* s, ssize_t n, const uv_buf_t* buf) noexcept {
            auto* worker = static_cast<Worker*>(s->data);
            worker->sup->on_beat(worker, buf->base, n);
        });
    Worker* raw = w.get();
    workers_.push_back(std::move(w));
    return raw;
}

void Supervisor::on_beat(Worker* w, const char* data, ssize_t n) {
    if (n <= 0) {
        if (n < 0) uv_read_stop(reinterpret_cast<uv_stream_t*>(&w->beat));
        return;
    }
    w->last_beat = now_ms();
    if (std::memchr(data, 'R', static_cast<std::size_t>(n)) != nullptr) {
        w->ready = true;
        if (w == restart_new_) continue_rolling_restart();
    }
}

void Supervisor::terminate(Worker* w, const char* verb) {
    if (w->exited || w->stopping) return;
    w->stopping = true;
    kill(w->pid, SIGTERM);
    if (verb != nullptr)
        log_line("INFO", std::string(verb) + " child process [" + std::to_string(w->pid) + "]");
    if (opts_.graceful_timeout >= 0) {
        // The worker bounds its own drain by the same timeout; this is the backstop.
        w->kill_at = now_ms() + static_cast<std::uint64_t>(opts_.graceful_timeout * 1000) + 2000;
    }
}

std::size_t Supervisor::live_workers() const {
    // The pool's size: a rolling restart's new worker is an extra until its old one goes.
    std::size_t n = 0;
    for (const auto& w : workers_) {
        if (!w->exited && !w->retiring && w.get() != restart_new_) ++n;
    }
    return n;
}

void Supervisor::stop_all() {
    stopping_ = true;
    // A rolling restart in progress ends here: its new worker (ready or not) stops with the rest.
    restart_queue_.clear();
    restart_new_ = nullptr;
    restart_old_ = nullptr;
    if (listen_fd_ >= 0 && opts_.fd < 0) {
        close(listen_fd_);  // the workers hold their own copies until they stop listening
        listen_fd_ = -1;
    }
    for (auto& w : workers_)
        terminate(w.get(), "Terminated");
    maybe_finish();
}

void Supervisor::force_all() {
    for (auto& w : workers_) {
        if (!w->exited) kill(w->pid, SIGKILL);
    }
}

void Supervisor::on_exit(Worker* w, int64_t status, int term_signal) {
    w->exited = true;
    if (metrics_) metrics_->region().release_slot(std::exchange(w->metrics_slot, -1));
    close_worker_handles(w);
    if (w == restart_old_) {
        restart_old_ = nullptr;
        continue_rolling_restart();
    }
    if (stopping_ || w->retiring) {
        if (stopping_ && !w->stopping) {
            log_line("INFO", "Child process [" + std::to_string(w->pid) + "] exited");
        }
        maybe_finish();
        return;
    }
    if (w == restart_new_) {
        // The replacement brought up by a rolling restart died before it was ready (say, a
        // broken deploy: exit code 3). Like Uvicorn, keep the worker it was to replace and
        // abort the restart; it was an extra worker, so it is not respawned either (the pool
        // would grow by one, and the restart would wait for it forever).
        restart_new_ = nullptr;
        std::string keep =
            restart_queue_.empty()
                ? std::string()
                : "keeping worker [" + std::to_string(restart_queue_.front()->pid) + "] and ";
        log_line("ERROR", "New child process [" + std::to_string(w->pid) + "] " +
                              (status == 3 ? "failed to start" : "died") + "; " + keep +
                              "aborting the restart.");
        restart_queue_.clear();
        return;
    }
    bool replaced = false;
    if (!restart_queue_.empty()) {
        // An old worker still waiting for its turn in a rolling restart died: if the restart's
        // new worker is already coming up for it, that one takes its place.
        replaced = restart_new_ != nullptr && restart_queue_.front() == w;
        restart_queue_.remove(w);
    }
    if (status == 3) {
        log_line("ERROR", "Child process [" + std::to_string(w->pid) +
                              "] failed to start, stopping the parent process.");
        exit_code_ = 3;
        stop_all();
        return;
    }
    std::string how = term_signal != 0 ? " (signal " + std::to_string(term_signal) + ")"
                                       : " (exit code " + std::to_string(status) + ")";
    log_line(status == 0 && term_signal == 0 ? "INFO" : "WARNING",
             "Child process [" + std::to_string(w->pid) + "] died" + how);
    if (!replaced) {
        if (metrics_) metrics_->note_restart();
        spawn();
    }
}

void Supervisor::maybe_finish() {
    for (const auto& w : workers_) {
        if (!w->exited) return;
    }
    if (stopping_) uv_stop(&loop_);
}

void Supervisor::start_rolling_restart() {
    // Every worker started before this signal is replaced, one at a time. During a restart
    // that is still going on, that adds the workers it already brought up (and the one coming
    // up now) behind the old ones still queued: they may run the code of the deploy before.
    for (auto& w : workers_) {
        Worker* p = w.get();
        if (p->exited || p->stopping || p->retiring) continue;
        if (std::find(restart_queue_.begin(), restart_queue_.end(), p) == restart_queue_.end())
            restart_queue_.push_back(p);
    }
    continue_rolling_restart();
}

void Supervisor::continue_rolling_restart() {
    if (stopping_) return;
    if (restart_new_ != nullptr && restart_new_->ready && restart_old_ == nullptr) {
        // The new worker serves; retire the old one it replaces (if SIGTTOU or a crash did
        // not take that one away meanwhile: then the new worker simply takes its place).
        restart_new_ = nullptr;
        Worker* old = restart_queue_.empty() ? nullptr : restart_queue_.front();
        if (old != nullptr) restart_queue_.pop_front();
        if (old != nullptr && !old->exited && !old->retiring) {
            old->retiring = true;
            restart_old_ = old;
            terminate(old, "Terminated");
            return;  // continue when it exits
        }
    }
    if (restart_new_ != nullptr || restart_old_ != nullptr) return;
    while (!restart_queue_.empty() && restart_queue_.front()->exited)
        restart_queue_.pop_front();
    if (restart_queue_.empty()) return;
    restart_new_ = spawn();
    if (restart_new_ == nullptr) {
        restart_queue_.clear();  // could not start a process: keep the old workers
        return;
    }
    if (metrics_) metrics_->note_restart();
    restart_deadline_ =
        now_ms() + static_cast<std::uint64_t>(std::max(opts_.healthcheck_timeout, 30.0) * 1000);
}

void Supervisor::on_signal(int signum) {
    switch (signum) {
        case SIGINT:
        case SIGTERM: {
            const char* name = signum == SIGINT ? "SIGINT" : "SIGTERM";
            if (stopping_ || draining_) {
                if (signum == SIGINT) {
                    log_line("INFO", "Received SIGINT again, forcing exit.");
                    force_all();
                    stopping_ = true;
                }
                return;
            }
            log_line("INFO", std::string("Received ") + name + ", exiting.");
            if (opts_.drain > 0) {
                draining_ = true;
                drain_until_ = now_ms() + static_cast<std::uint64_t>(opts_.drain * 1000);
                log_line("INFO", "Draining: still serving for " + fmt_seconds(opts_.drain) +
                                     " before stopping the workers.");
            } else {
                stop_all();
            }
            return;
        }
        case SIGHUP:
            if (stopping_ || draining_) return;
            log_line("INFO", "Received SIGHUP, restarting processes.");
            start_rolling_restart();
            return;
        case SIGTTIN:
            if (stopping_ || draining_) return;
            log_line("INFO", "Received SIGTTIN, increasing the number of processes.");
            spawn();
            return;
        case SIGTTOU: {
            if (stopping_ || draining_) return;
            log_line("INFO", "Received SIGTTOU, decreasing number of processes.");
            if (live_workers() <= 1) {
                log_line("INFO",
                         "Already reached one process, cannot decrease the number of processes "
                         "anymore.");
                return;
            }
            // During a rolling restart, an old worker still waiting for its turn goes first (it
            // was to go anyway); otherwise the newest. Never the restart's new worker.
            Worker* victim = nullptr;
            for (auto it = restart_queue_.rbegin(); it != restart_queue_.rend(); ++it) {
                Worker* w = *it;
                bool has_new = restart_new_ != nullptr && w == restart_queue_.front();
                if (!w->exited && !w->retiring && !w->stopping && !has_new && w != restart_new_) {
                    victim = w;
                    break;
                }
            }
            for (auto it = workers_.rbegin(); victim == nullptr && it != workers_.rend(); ++it) {
                Worker* w = it->get();
                if (!w->exited && !w->retiring && !w->stopping && w != restart_new_) victim = w;
            }
            if (victim == nullptr) return;
            restart_queue_.remove(victim);
            victim->retiring = true;
            terminate(victim, "Terminated");
            return;
        }
        default:
            return;
    }
}

void Supervisor::on_check() {
    std::uint64_t now = now_ms();
    if (draining_ && !stopping_ && now >= drain_until_) {
        draining_ = false;
        stop_all();
    }
    if (restart_new_ != nullptr && !restart_new_->ready && now > restart_deadline_) {
        log_line("WARNING", "New child process [" + std::to_string(restart_new_->pid) +
                                "] was not ready in time; aborting the restart.");
        restart_new_->retiring = true;
        kill(restart_new_->pid, SIGKILL);
        restart_new_ = nullptr;
        restart_queue_.clear();
    }
    auto timeout = static_cast<std::uint64_t>(opts_.healthcheck_timeout * 1000);
    for (auto& wp : workers_) {
        Worker* w = wp.get();
        if (w->exited) continue;
        if (w->kill_at != 0 && now >= w->kill_at) {
            if (!w->blocked) {
                log_line("WARNING", "Child process [" + std::to_string(w->pid) +
                                        "] did not stop in time; killing it.");
            }
            kill(w->pid, SIGKILL);
            w->kill_at = 0;
            continue;
        }
        if (!w->ready || w->stopping || timeout == 0) continue;
        if (now - w->last_beat > timeout) {
            // The heartbeat comes from the worker's event loop itself: a CPU-bound or
            // time.sleep() handler stops it. SIGUSR1 makes faulthandler print the stack.
            log_line("ERROR", "Child process [" + std::to_string(w->pid) +
                                  "] event loop blocked for more than " +
                                  fmt_seconds(opts_.healthcheck_timeout) +
                                  "; its Python stack follows. Killing it.");
            kill(w->pid, SIGUSR1);
            if (metrics_) metrics_->note_blocked_kill();
            w->stopping = true;
            w->blocked = true;
            w->kill_at = now + 500;  // time for faulthandler to write the stack
        }
    }
    // Drop the records of exited workers whose handles are closed.
    for (auto it = workers_.begin(); it != workers_.end();) {
        Worker* w = it->get();
        bool referenced = w == restart_new_ || w == restart_old_;
        for (Worker* q : restart_queue_)
            referenced = referenced || q == w;
        if (w->exited && w->open_handles == 0 && !referenced) {
            it = workers_.erase(it);
        } else {
            ++it;
        }
    }
}

int Supervisor::run() {
    uv_loop_init(&loop_);
    if (!bind_socket()) return 3;
    log_line("INFO", "Started parent process [" + std::to_string(getpid()) + "]");
    if (opts_.metrics_port >= 0) {
        metrics_ = std::make_unique<SupervisorMetrics>(&loop_, [this] { return live_workers(); });
        std::string error = metrics_->start(opts_.metrics_host, opts_.metrics_port);
        if (!error.empty()) {
            log_line("ERROR", error);
            return 3;
        }
        std::string host = opts_.metrics_host.find(':') != std::string::npos
                               ? "[" + opts_.metrics_host + "]"
                               : opts_.metrics_host;
        log_line("INFO", "Prometheus metrics on http://" + host + ":" +
                             std::to_string(metrics_->bound_port()) + "/metrics");
    }
    const int sigs[5] = {SIGINT, SIGTERM, SIGHUP, SIGTTIN, SIGTTOU};
    for (int i = 0; i < 5; ++i) {
        uv_signal_init(&loop_, &signals_[i]);
        signals_[i].data = this;
        uv_signal_start(
            &signals_[i],
            [](uv_signal_t* h, int signum) noexcept {
                static_cast<Supervisor*>(h->data)->on_signal(signum);
            },
            sigs[i]);
    }
    uv_timer_init(&loop_, &check_timer_);
    check_timer_.data = this;
    uv_timer_start(
        &check_timer_,
        [](uv_timer_t* t) noexcept { static_cast<Supervisor*>(t->data)->on_check(); }, 100, 100);
    for (int i = 0; i < opts_.workers; ++i)
        spawn();
    uv_run(&loop_, UV_RUN_DEFAULT);

    // Stopped: close what is left and let libuv finish its callbacks.
    for (auto& s : signals_)
        uv_close(reinterpret_cast<uv_handle_t*>(&s), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&check_timer_), nullptr);
    if (metrics_) metrics_->close();
    for (auto& w : workers_)
        close_worker_handles(w.get());
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_loop_close(&loop_);
    if (!opts_.uds.empty()) unlink(opts_.uds.c_str());
    log_line("INFO", "Stopping parent process [" + std::to_string(getpid()) + "]");
    return exit_code_;
}

}  // namespace

namespace {

// The whole text as a base-10 integer in [lo, hi] (no sign but '-', no spaces, nothing after).
bool parse_int(const std::string& text, long lo, long hi, int& out) {
    long v = 0;
    const char* end = text.data() + text.size();
    auto [ptr, ec] = std::from_chars(text.data(), end, v);
    if (ec != std::errc() || ptr != end || text.empty() || v < lo || v > hi) return false;
    out = static_cast<int>(v);
    return true;
}

// The whole text as a finite decimal number of seconds in [lo, a million years]: the
// supervisor turns seconds into integer milliseconds, which must not overflow.
constexpr double kMaxSeconds = 3.2e13;

bool parse_seconds(const std::string& text, double lo, double& out) {
    double v = 0;
    const char* end = text.data() + text.size();
    auto [ptr, ec] = std::from_chars(text.data(), end, v, std::chars_format::general);
    if (ec != std::errc() || ptr != end || text.empty() || !std::isfinite(v) || v < lo ||
        v > kMaxSeconds) {
        return false;
    }
    out = v;
    return true;
}

}  // namespace

std::string parse_supervisor_args(const std::vector<std::string>& args, SupervisorOptions& o) {
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "--") {
            o.worker_argv.assign(args.begin() + static_cast<long>(i) + 1, args.end());
            break;
        }
        if (i + 1 >= args.size()) return "missing value for " + a;
        const std::string& v = args[++i];
        bool ok = true;
        if (a == "--workers") {
            ok = parse_int(v, 1, kMaxWorkers, o.workers);
        } else if (a == "--host") {
            o.host = v;
        } else if (a == "--port") {
            ok = parse_int(v, 0, 65535, o.port);
        } else if (a == "--uds") {
            o.uds = v;
        } else if (a == "--fd") {
            ok = parse_int(v, 0, INT32_MAX, o.fd);
        } else if (a == "--backlog") {
            ok = parse_int(v, 1, INT32_MAX, o.backlog);
        } else if (a == "--healthcheck-timeout") {
            ok = parse_seconds(v, 0, o.healthcheck_timeout);
        } else if (a == "--graceful-timeout") {
            ok = parse_seconds(v, -1, o.graceful_timeout);  // -1: wait for ever
        } else if (a == "--drain") {
            ok = parse_seconds(v, 0, o.drain);
        } else if (a == "--scheme") {
            if (v != "http" && v != "https") return "--scheme must be http or https";
            o.scheme = v;
        } else if (a == "--metrics-port") {
            ok = parse_int(v, -1, 65535, o.metrics_port);  // -1: off
        } else if (a == "--metrics-host") {
            o.metrics_host = v;
        } else if (a == "--log-info") {
            if (v != "0" && v != "1") return "--log-info must be 0 or 1";
            o.log_info = v == "1";
        } else {
            return "unknown option " + a;
        }
        if (!ok) return "invalid value for " + a + ": " + v;
    }
    if (o.worker_argv.empty()) return "no worker command after --";
    return "";
}

int run_supervisor(const SupervisorOptions& options) {
    Supervisor s(options);
    return s.run();
}

}  // namespace cppuvicorn::cli
