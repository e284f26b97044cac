// SPDX-License-Identifier: BSD-3-Clause
#include "cli/src/metrics.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string_view>
#include <sys/mman.h>
#include <unistd.h>

namespace cppuvicorn::cli {

using namespace cppuvicorn::core;

namespace {

// Pairs kept as two counters: what a dead worker still had open is folded as closed.
constexpr std::size_t kOpenClosePairs[][2] = {
    {kRequestsStarted, kRequestsFinished},
    {kConnectionsOpened, kConnectionsClosed},
    {kWebSocketsOpened, kWebSocketsClosed},
};

constexpr std::size_t kScrapeTimeoutMs = 10000;
constexpr std::size_t kMaxRequestHead = 8192;

void append_metric(std::string& out, const char* name, const char* type, const char* help) {
    out.append("# HELP ").append(name).append(" ").append(help).append("\n");
    out.append("# TYPE ").append(name).append(" ").append(type).append("\n");
}

void append_sample(std::string& out, const char* name, std::string_view labels,
                   std::uint64_t value) {
    out.append(name).append(labels).append(" ").append(std::to_string(value)).append("\n");
}

// A metric with one unlabelled sample: its HELP and TYPE lines, then the sample.
void append_single(std::string& out, const char* name, const char* type, const char* help,
                   std::uint64_t value) {
    append_metric(out, name, type, help);
    append_sample(out, name, "", value);
}

std::uint64_t gauge(const MetricsSnapshot& s, std::size_t opened, std::size_t closed) {
    // The closed counter of a live worker never passes its opened one; a scrape can still see
    // the two a moment apart.
    return s.values[opened] > s.values[closed] ? s.values[opened] - s.values[closed] : 0;
}

std::string format_seconds(double v, const char* fmt) {
    char buf[64];
    std::snprintf(buf, sizeof buf, fmt, v);
    return buf;
}

}  // namespace

std::string render_prometheus(const MetricsSnapshot& s) {
    std::string out;
    out.reserve(4096);
    const auto& v = s.values;

    append_metric(out, "cppuvicorn_http_requests_total", "counter",
                  "HTTP requests whose response started, by status class.");
    for (int cls = 1; cls <= 5; ++cls) {
        std::string labels = "{status=\"" + std::to_string(cls) + "xx\"}";
        append_sample(out, "cppuvicorn_http_requests_total", labels,
                      v[kRequests1xx + static_cast<std::size_t>(cls - 1)]);
    }
    append_single(out, "cppuvicorn_http_requests_in_flight", "gauge",
                  "HTTP requests read and not yet finished.",
                  gauge(s, kRequestsStarted, kRequestsFinished));

    const char* hist = "cppuvicorn_http_request_duration_seconds";
    append_metric(out, hist, "histogram", "Time from a request's head to the end of its response.");
    std::uint64_t cumulative = 0;
    for (std::size_t b = 0; b < kDurationBucketCount; ++b) {
        cumulative += v[kDurationBucket0 + b];
        std::string le =
            b < std::size(kDurationBoundsNs)
                ? format_seconds(static_cast<double>(kDurationBoundsNs[b]) * 1e-9, "%g")
                : "+Inf";
        append_sample(out, "cppuvicorn_http_request_duration_seconds_bucket", "{le=\"" + le + "\"}",
                      cumulative);
    }
    out.append(hist).append("_sum ");
    out.append(format_seconds(static_cast<double>(v[kDurationSumNs]) * 1e-9, "%.6f"));
    out.append("\n");
    append_sample(out, "cppuvicorn_http_request_duration_seconds_count", "", cumulative);

    append_single(out, "cppuvicorn_connections_open", "gauge", "Open client connections.",
                  gauge(s, kConnectionsOpened, kConnectionsClosed));
    append_single(out, "cppuvicorn_connections_total", "counter", "Client connections accepted.",
                  v[kConnectionsOpened]);
    append_single(out, "cppuvicorn_websockets_open", "gauge", "Open WebSocket sessions.",
                  gauge(s, kWebSocketsOpened, kWebSocketsClosed));
    append_single(out, "cppuvicorn_websockets_total", "counter", "WebSocket sessions accepted.",
                  v[kWebSocketsOpened]);
    append_single(out, "cppuvicorn_received_bytes_total", "counter",
                  "Bytes read from client connections.", v[kBytesReceived]);
    append_single(out, "cppuvicorn_sent_bytes_total", "counter",
                  "Bytes written to client connections.", v[kBytesSent]);
    append_single(out, "cppuvicorn_concurrency_limit_rejections_total", "counter",
                  "503 responses sent because of --limit-concurrency.", v[kLimitRejections]);
    append_single(out, "cppuvicorn_http_protocol_errors_total", "counter",
                  "Invalid requests answered by the server itself (400, 413, 414, 431, ...).",
                  v[kProtocolErrors]);
    append_single(out, "cppuvicorn_worker_restarts_total", "counter",
                  "Workers started to replace one that died, was killed or was restarted.",
                  s.worker_restarts);
    append_single(out, "cppuvicorn_worker_blocked_kills_total", "counter",
                  "Workers killed because their event loop was blocked.", s.blocked_kills);
    append_single(out, "cppuvicorn_workers", "gauge", "Worker processes running.", s.workers);
    return out;
}

// ---------------------------------------------------------------------------------------------
// MetricsRegion

MetricsRegion::~MetricsRegion() {
    if (region_ != nullptr) munmap(region_, metrics_region_size());
    if (fd_ >= 0) ::close(fd_);
}

bool MetricsRegion::create() {
    fd_ = memfd_create("cppuvicorn-metrics", MFD_CLOEXEC);
    if (fd_ < 0) return false;
    if (ftruncate(fd_, static_cast<off_t>(metrics_region_size())) != 0) return false;
    void* p = mmap(nullptr, metrics_region_size(), PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (p == MAP_FAILED) return false;
    region_ = p;
    auto* header = static_cast<MetricsHeader*>(region_);
    header->magic = kMetricsMagic;
    header->slot_count = kMetricsMaxSlots;
    header->slot_size = sizeof(MetricsSlot);
    used_.assign(kMetricsMaxSlots, false);
    return true;
}

int MetricsRegion::acquire_slot() {
    for (std::size_t i = 0; i < used_.size(); ++i) {
        if (used_[i]) continue;
        used_[i] = true;
        MetricsSlot* s = slot(static_cast<int>(i));
        for (auto& value : s->values)
            value.store(0, std::memory_order_relaxed);
        return static_cast<int>(i);
    }
    return -1;
}

void MetricsRegion::release_slot(int index) {
    if (index < 0 || static_cast<std::size_t>(index) >= used_.size() || !used_[index]) return;
    MetricsSlot* s = slot(index);
    std::uint64_t values[kMetricCount];
    for (std::size_t i = 0; i < kMetricCount; ++i)
        values[i] = s->get(i);
    for (const auto& pair : kOpenClosePairs)
        values[pair[1]] = values[pair[0]];
    for (std::size_t i = 0; i < kMetricCount; ++i)
        retired_[i] += values[i];
    used_[index] = false;
}

void MetricsRegion::sum_into(MetricsSnapshot& s) const {
    for (std::size_t i = 0; i < kMetricCount; ++i)
        s.values[i] += retired_[i];
    for (std::size_t n = 0; n < used_.size(); ++n) {
        if (!used_[n]) continue;
        const MetricsSlot* slot_n = slot(static_cast<int>(n));
        for (std::size_t i = 0; i < kMetricCount; ++i)
            s.values[i] += slot_n->get(i);
    }
}

// ---------------------------------------------------------------------------------------------
// SupervisorMetrics: the endpoint

struct SupervisorMetrics::Client {
    SupervisorMetrics* owner = nullptr;
    std::list<std::unique_ptr<Client>>::iterator self;
    uv_tcp_t tcp{};
    uv_timer_t timer{};
    uv_write_t write_req{};
    std::string in;
    std::string out;
    char buf[2048];
    int open_handles = 0;
    bool done = false;  // answered, or dropped
};

SupervisorMetrics::SupervisorMetrics(uv_loop_t* loop, std::function<std::size_t()> live_workers)
    : loop_(loop), live_workers_(std::move(live_workers)) {}

SupervisorMetrics::~SupervisorMetrics() = default;

std::string SupervisorMetrics::start(const std::string& host, int port) {
    if (!region_.create()) {
        return std::string("could not create the metrics region: ") + std::strerror(errno);
    }
    sockaddr_storage addr{};
    bool v6 = host.find(':') != std::string::npos;
    int rc = v6 ? uv_ip6_addr(host.c_str(), port, reinterpret_cast<sockaddr_in6*>(&addr))
                : uv_ip4_addr(host.c_str(), port, reinterpret_cast<sockaddr_in*>(&addr));
    if (rc != 0) return "invalid --metrics-host " + host;
    uv_tcp_init(loop_, &listener_);
    listener_.data = this;
    listening_ = true;
    rc = uv_tcp_bind(&listener_, reinterpret_cast<sockaddr*>(&addr), 0);
    if (rc == 0) rc = uv_listen(reinterpret_cast<uv_stream_t*>(&listener_), 64, on_connection);
    if (rc != 0) {
        return "could not listen on " + host + ":" + std::to_string(port) +
               " for metrics: " + uv_strerror(rc);
    }
    sockaddr_storage ss{};
    int len = sizeof ss;
    uv_tcp_getsockname(&listener_, reinterpret_cast<sockaddr*>(&ss), &len);
    bound_port_ = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                           : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    return "";
}

MetricsSnapshot SupervisorMetrics::snapshot() const {
    MetricsSnapshot s;
    region_.sum_into(s);
    s.worker_restarts = restarts_;
    s.blocked_kills = blocked_kills_;
    s.workers = live_workers_ ? live_workers_() : 0;
    return s;
}

void SupervisorMetrics::close() {
    if (listening_) {
        listening_ = false;
        uv_close(reinterpret_cast<uv_handle_t*>(&listener_), nullptr);
    }
    std::vector<Client*> all;
    for (auto& c : clients_)
        all.push_back(c.get());
    for (Client* c : all)
        drop(c);
}

void SupervisorMetrics::on_connection(uv_stream_t* server, int status) noexcept {
    auto* self = static_cast<SupervisorMetrics*>(server->data);
    if (status != 0) return;
    auto owned = std::make_unique<Client>();
    Client* c = owned.get();
    c->owner = self;
    self->clients_.push_back(std::move(owned));
    c->self = std::prev(self->clients_.end());
    uv_tcp_init(self->loop_, &c->tcp);
    uv_timer_init(self->loop_, &c->timer);
    c->tcp.data = c->timer.data = c->write_req.data = c;
    c->open_handles = 2;
    if (uv_accept(server, reinterpret_cast<uv_stream_t*>(&c->tcp)) != 0) {
        self->drop(c);
        return;
    }
    uv_timer_start(
        &c->timer,
        [](uv_timer_t* t) noexcept {
            auto* client = static_cast<Client*>(t->data);
            client->owner->drop(client);
        },
        kScrapeTimeoutMs, 0);
    uv_read_start(
        reinterpret_cast<uv_stream_t*>(&c->tcp),
        [](uv_handle_t* h, std::size_t, uv_buf_t* buf) noexcept {
            auto* client = static_cast<Client*>(h->data);
            *buf = uv_buf_init(client->buf, sizeof client->buf);
        },
        [](uv_stream_t* s, ssize_t n, const uv_buf_t* buf) noexcept {
            auto* client = static_cast<Client*>(s->data);
            if (n < 0) {
                client->owner->drop(client);
                return;
            }
            client->in.append(buf->base, static_cast<std::size_t>(n));
            if (client->in.find("\r\n\r\n") != std::string::npos ||
                client->in.find("\n\n") != std::string::npos ||
                client->in.size() > kMaxRequestHead) {
                client->owner->respond(client);
            }
        });
}

void SupervisorMetrics::respond(Client* c) {
    uv_read_stop(reinterpret_cast<uv_stream_t*>(&c->tcp));
    std::string_view line(c->in);
    line = line.substr(0, line.find_first_of("\r\n"));
    std::string_view method = line.substr(0, line.find(' '));
    std::string_view target;
    if (auto sp = line.find(' '); sp != std::string_view::npos) {
        target = line.substr(sp + 1);
        target = target.substr(0, target.find(' '));
        target = target.substr(0, target.find('?'));
    }
    int status = 200;
    const char* reason = "OK";
    std::string body;
    std::string extra;
    const char* type = "text/plain; charset=utf-8";
    if (c->in.size() > kMaxRequestHead) {
        status = 431;
        reason = "Request Header Fields Too Large";
        body = "Request Header Fields Too Large\n";
    } else if (target != "/metrics") {
        status = 404;
        reason = "Not Found";
        body = "Not Found: the metrics are at /metrics\n";
    } else if (method != "GET" && method != "HEAD") {
        status = 405;
        reason = "Method Not Allowed";
        body = "Method Not Allowed\n";
        extra = "Allow: GET, HEAD\r\n";
    } else {
        body = render_prometheus(snapshot());
        type = "text/plain; version=0.0.4; charset=utf-8";
    }
    c->out = "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\nContent-Type: " + type +
             "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" + extra +
             "Connection: close\r\n\r\n";
    if (method != "HEAD") c->out += body;
    uv_buf_t b = uv_buf_init(c->out.data(), static_cast<unsigned>(c->out.size()));
    int rc = uv_write(&c->write_req, reinterpret_cast<uv_stream_t*>(&c->tcp), &b, 1,
                      [](uv_write_t* req, int) noexcept {
                          auto* client = static_cast<Client*>(req->data);
                          client->owner->drop(client);
                      });
    if (rc != 0) drop(c);
}

void SupervisorMetrics::drop(Client* c) {
    if (c->done) return;
    c->done = true;
    auto on_close = [](uv_handle_t* h) noexcept {
        auto* client = static_cast<Client*>(h->data);
        if (--client->open_handles == 0) client->owner->clients_.erase(client->self);
    };
    uv_close(reinterpret_cast<uv_handle_t*>(&c->timer), on_close);
    uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp), on_close);
}

}  // namespace cppuvicorn::cli
