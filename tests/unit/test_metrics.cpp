// SPDX-License-Identifier: BSD-3-Clause
// Metrics: the worker's slot (core/metrics.hpp) as HttpConnection fills it, the supervisor's
// region folding the slots of workers that are gone, and the Prometheus text exposition
// (cli/src/metrics.hpp). No sockets: a FakeTransport drives the connection.
#include "cli/src/metrics.hpp"
#include "core/http_connection.hpp"
#include "core/metrics.hpp"

#include <catch2/catch.hpp>

#include "tests/unit/support/fake_transport.hpp"
#include "tests/unit/support/recording_handler.hpp"
#include <string>

namespace {

using namespace cppuvicorn::core;
using cppuvicorn::cli::MetricsRegion;
using cppuvicorn::cli::MetricsSnapshot;
using cppuvicorn::cli::render_prometheus;
using cppuvicorn::test::FakeTransport;
using cppuvicorn::test::RecordingHandler;
using cppuvicorn::test::Response;
using Moment = RecordingHandler::Moment;

struct Rig {
    MetricsSlot slot{};
    ServerConfig config = [this] {
        ServerConfig c;
        c.date_header = false;
        c.metrics = &slot;
        return c;
    }();
    StatusLines lines;
    DateCache date;
    RecordingHandler app;
    ConnectionContext ctx{config, lines, date, app};
    FakeTransport wire;
    HttpConnection conn{wire, ctx, PeerAddress{"127.0.0.1", 40000, false},
                        PeerAddress{"127.0.0.1", 8000, false}};

    Rig() { wire.attach(conn); }
    std::uint64_t operator[](std::size_t i) const { return slot.get(i); }
    std::uint64_t observed() const {
        std::uint64_t n = 0;
        for (std::size_t b = 0; b < kDurationBucketCount; ++b)
            n += slot.get(kDurationBucket0 + b);
        return n;
    }
};

// The value of one sample line ("name{labels} value") in an exposition, or "" if absent.
std::string sample(const std::string& text, const std::string& series) {
    std::string key = "\n" + series + " ";
    auto at = text.find(key);
    if (at == std::string::npos) return "";
    at += key.size();
    return text.substr(at, text.find('\n', at) - at);
}

}  // namespace

TEST_CASE("Metrics: a slot counts status classes and sorts durations into buckets", "[metrics]") {
    MetricsSlot slot{};
    slot.observe_request(200, 100'000);  // 0.1 ms → le 0.0005
    slot.observe_request(404, 500'000);  // exactly 0.5 ms → le 0.0005 (upper bound is inclusive)
    slot.observe_request(503, 500'001);  // → le 0.001
    slot.observe_request(101, 20'000'000'000);  // 20 s → +Inf
    slot.observe_request(700, 1);               // no class, still observed
    CHECK(slot.get(kRequests1xx) == 1);
    CHECK(slot.get(kRequests2xx) == 1);
    CHECK(slot.get(kRequests3xx) == 0);
    CHECK(slot.get(kRequests4xx) == 1);
    CHECK(slot.get(kRequests5xx) == 1);
    CHECK(slot.get(kDurationBucket0) == 3);
    CHECK(slot.get(kDurationBucket0 + 1) == 1);
    CHECK(slot.get(kDurationBucket0 + kDurationBucketCount - 1) == 1);
    CHECK(slot.get(kDurationSumNs) == 100'000 + 500'000 + 500'001 + 20'000'000'000 + 1);
}

TEST_CASE("Metrics: HttpConnection counts requests from head to release", "[metrics]") {
    Rig rig;
    rig.app.respond_at(Moment::kNever);
    rig.wire.deliver("GET /a HTTP/1.1\r\nHost: a\r\n\r\n");
    CHECK(rig[kRequestsStarted] == 1);
    CHECK(rig[kRequestsFinished] == 0);  // in flight until the app answers
    REQUIRE(rig.app.respond(Response::text("hi", 404)) == WriteResult::kOk);
    CHECK(rig[kRequestsFinished] == 1);
    CHECK(rig[kRequests4xx] == 1);
    CHECK(rig.observed() == 1);

    // A response that started but never completed (client gone) still counts, by its status.
    rig.wire.deliver("GET /b HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(rig.app.start(Response{500, {{"content-length", "10"}}, ""}) == WriteResult::kOk);
    rig.wire.eof();
    rig.wire.end_of_turn();
    CHECK(rig[kRequestsStarted] == 2);
    CHECK(rig[kRequestsFinished] == 2);
    CHECK(rig[kRequests5xx] == 1);
    CHECK(rig.observed() == 2);
}

TEST_CASE("Metrics: a request lost before its response is finished but not classed", "[metrics]") {
    Rig rig;
    rig.app.respond_at(Moment::kNever);
    rig.wire.deliver("GET /a HTTP/1.1\r\nHost: a\r\n\r\n");
    rig.wire.eof();
    rig.wire.end_of_turn();
    CHECK(rig[kRequestsStarted] == 1);
    CHECK(rig[kRequestsFinished] == 1);
    CHECK(rig.observed() == 0);
    for (std::size_t i = kRequests1xx; i <= kRequests5xx; ++i)
        CHECK(rig[i] == 0);
}

TEST_CASE("Metrics: respond_simple (the 503 of the limit) and protocol errors", "[metrics]") {
    Rig rig;
    rig.app.refuse_with(503, "Service Unavailable");
    rig.wire.deliver("GET /a HTTP/1.1\r\nHost: a\r\n\r\n");
    rig.wire.end_of_turn();
    CHECK(rig[kRequests5xx] == 1);
    CHECK(rig[kRequestsFinished] == 1);
    CHECK(rig[kProtocolErrors] == 0);

    Rig bad;
    bad.wire.deliver("GET /a HTTP/1.1\r\nHost a\r\n\r\n");  // no colon: 400
    bad.wire.end_of_turn();
    CHECK(bad[kProtocolErrors] == 1);
    CHECK(bad[kRequestsStarted] == 0);
    CHECK(bad.observed() == 0);
}

TEST_CASE("Metrics: an exited worker's slot is folded so counters never go down", "[metrics]") {
    MetricsRegion region;
    REQUIRE(region.create());
    int a = region.acquire_slot();
    int b = region.acquire_slot();
    REQUIRE(a >= 0);
    REQUIRE(b >= 0);
    REQUIRE(a != b);
    MetricsSlot* sa = region.slot(a);
    sa->observe_request(200, 1000);
    sa->add(kRequestsStarted, 3);  // two more still in flight
    sa->add(kRequestsFinished, 1);
    sa->add(kConnectionsOpened, 5);
    sa->add(kConnectionsClosed, 2);
    sa->add(kWebSocketsOpened, 1);
    sa->add(kBytesSent, 4096);
    region.slot(b)->add(kConnectionsOpened, 1);

    MetricsSnapshot before;
    region.sum_into(before);
    CHECK(before.values[kConnectionsOpened] - before.values[kConnectionsClosed] == 4);
    CHECK(before.values[kRequestsStarted] - before.values[kRequestsFinished] == 2);

    region.release_slot(a);  // SIGKILLed: what it had open is gone
    MetricsSnapshot after;
    region.sum_into(after);
    for (std::size_t i = 0; i < kMetricCount; ++i)
        CHECK(after.values[i] >= before.values[i]);
    CHECK(after.values[kRequests2xx] == 1);
    CHECK(after.values[kBytesSent] == 4096);
    CHECK(after.values[kConnectionsOpened] == 6);
    CHECK(after.values[kConnectionsOpened] - after.values[kConnectionsClosed] == 1);  // b's
    CHECK(after.values[kRequestsStarted] == after.values[kRequestsFinished]);
    CHECK(after.values[kWebSocketsOpened] == after.values[kWebSocketsClosed]);

    // The replacement reuses the slot, zeroed; the retired totals stay.
    int c = region.acquire_slot();
    CHECK(c == a);
    CHECK(region.slot(c)->get(kBytesSent) == 0);
    region.slot(c)->add(kBytesSent, 10);
    MetricsSnapshot later;
    region.sum_into(later);
    CHECK(later.values[kBytesSent] == 4106);
    region.release_slot(c);
    region.release_slot(c);  // twice: no double count
    MetricsSnapshot last;
    region.sum_into(last);
    CHECK(last.values[kBytesSent] == 4106);
}

TEST_CASE("Metrics: the slot a worker attaches is the one the supervisor reads", "[metrics]") {
    MetricsRegion region;
    REQUIRE(region.create());
    int index = region.acquire_slot();
    MetricsSlot* worker_view = attach_metrics_slot(region.fd(), static_cast<std::size_t>(index));
    REQUIRE(worker_view != nullptr);
    CHECK(worker_view != region.slot(index));  // a second mapping of the same memory
    worker_view->add(kBytesReceived, 77);
    CHECK(region.slot(index)->get(kBytesReceived) == 77);
    CHECK(attach_metrics_slot(region.fd(), kMetricsMaxSlots) == nullptr);
    CHECK(attach_metrics_slot(-1, 0) == nullptr);
}

TEST_CASE("Metrics: the Prometheus text exposition", "[metrics]") {
    MetricsSnapshot s;
    s.values[kRequests2xx] = 7;
    s.values[kRequests5xx] = 2;
    s.values[kRequestsStarted] = 10;
    s.values[kRequestsFinished] = 9;
    s.values[kDurationBucket0] = 4;                             // ≤ 0.5 ms
    s.values[kDurationBucket0 + 2] = 3;                         // ≤ 2.5 ms
    s.values[kDurationBucket0 + kDurationBucketCount - 1] = 2;  // > 10 s
    s.values[kDurationSumNs] = 25'001'500'000;
    s.values[kConnectionsOpened] = 5;
    s.values[kConnectionsClosed] = 3;
    s.values[kWebSocketsOpened] = 1;
    s.values[kBytesReceived] = 123;
    s.values[kBytesSent] = 456;
    s.values[kLimitRejections] = 2;
    s.worker_restarts = 1;
    s.blocked_kills = 1;
    s.workers = 2;
    std::string text = "\n" + render_prometheus(s);

    CHECK(sample(text, "cppuvicorn_http_requests_total{status=\"1xx\"}") == "0");
    CHECK(sample(text, "cppuvicorn_http_requests_total{status=\"2xx\"}") == "7");
    CHECK(sample(text, "cppuvicorn_http_requests_total{status=\"5xx\"}") == "2");
    CHECK(sample(text, "cppuvicorn_http_requests_in_flight") == "1");
    CHECK(sample(text, "cppuvicorn_http_request_duration_seconds_bucket{le=\"0.0005\"}") == "4");
    CHECK(sample(text, "cppuvicorn_http_request_duration_seconds_bucket{le=\"0.001\"}") == "4");
    CHECK(sample(text, "cppuvicorn_http_request_duration_seconds_bucket{le=\"0.0025\"}") == "7");
    CHECK(sample(text, "cppuvicorn_http_request_duration_seconds_bucket{le=\"10\"}") == "7");
    CHECK(sample(text, "cppuvicorn_http_request_duration_seconds_bucket{le=\"+Inf\"}") == "9");
    CHECK(sample(text, "cppuvicorn_http_request_duration_seconds_count") == "9");
    CHECK(sample(text, "cppuvicorn_http_request_duration_seconds_sum") == "25.001500");
    CHECK(sample(text, "cppuvicorn_connections_open") == "2");
    CHECK(sample(text, "cppuvicorn_connections_total") == "5");
    CHECK(sample(text, "cppuvicorn_websockets_open") == "1");
    CHECK(sample(text, "cppuvicorn_received_bytes_total") == "123");
    CHECK(sample(text, "cppuvicorn_sent_bytes_total") == "456");
    CHECK(sample(text, "cppuvicorn_concurrency_limit_rejections_total") == "2");
    CHECK(sample(text, "cppuvicorn_worker_restarts_total") == "1");
    CHECK(sample(text, "cppuvicorn_worker_blocked_kills_total") == "1");
    CHECK(sample(text, "cppuvicorn_workers") == "2");
    CHECK(text.find("# TYPE cppuvicorn_http_request_duration_seconds histogram\n") !=
          std::string::npos);
    CHECK(text.find("# TYPE cppuvicorn_http_requests_total counter\n") != std::string::npos);
    CHECK(text.back() == '\n');

    // Every sample line is "name[{labels}] value" with a name the exposition declared a TYPE
    // for (histogram samples by their base name).
    std::size_t pos = 1;
    while (pos < text.size()) {
        std::size_t end = text.find('\n', pos);
        std::string line = text.substr(pos, end - pos);
        pos = end + 1;
        if (line.rfind("# ", 0) == 0) continue;
        std::string name = line.substr(0, line.find_first_of("{ "));
        for (const char* suffix : {"_bucket", "_sum", "_count"}) {
            std::string sfx = suffix;
            if (name.size() > sfx.size() && name.ends_with(sfx) &&
                name.starts_with("cppuvicorn_http_request_duration_seconds")) {
                name.resize(name.size() - sfx.size());
            }
        }
        INFO(line);
        CHECK(text.find("# TYPE " + name + " ") != std::string::npos);
        CHECK(line.find(' ') != std::string::npos);
    }
}

TEST_CASE("Metrics: a gauge never underflows when closed is read ahead of opened", "[metrics]") {
    MetricsSnapshot s;
    s.values[kConnectionsOpened] = 3;
    s.values[kConnectionsClosed] = 4;
    CHECK(sample("\n" + render_prometheus(s), "cppuvicorn_connections_open") == "0");
}
