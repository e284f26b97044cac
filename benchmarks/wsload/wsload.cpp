// SPDX-License-Identifier: BSD-3-Clause
// wsload: a WebSocket echo load generator on libuv, one thread, plus the two helpers the
// benchmarks need around it. Not part of cppuvicorn; used by benchmarks/ws_run.py and
// benchmarks/ws_idle_rss.py.
//
//   wsload --port P [--conns N] [--size B] [--pipeline K] [--duration S] [--warmup S] [--text]
//       Load: N connections do the opening handshake, then each keeps K messages of B bytes in
//       flight (client frames, masked as RFC 6455 §5.3 requires), sending the next message as
//       soon as an echo comes back. Echoes are checked byte for byte and counted over S seconds
//       after a warm-up. Prints one JSON line.
//   wsload --port P --idle --conns N [--idle-messages M]
//       Idle: opens N WebSockets, exchanges M echoes on each (default 1), prints one JSON line
//       when all are open, then holds them (answering pings) until SIGTERM / SIGINT.
//   wsload --serve P
//       A trivial native echo server (handshake + unmask + echo, no Python): the anchor that
//       shows how fast this client can go on the machine.
//
// Build: cmake -DCPPUVICORN_BUILD_BENCHMARKS=ON (target wsload), or
//        g++ -O2 -std=c++20 wsload.cpp -luv -lcrypto -o wsload (ws_run.py does this itself).
#include <openssl/evp.h>
#include <uv.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <string_view>
#include <sys/resource.h>
#include <vector>

namespace {

// ---------------------------------------------------------------------------------------------
// Options

struct Options {
    const char* host = "127.0.0.1";
    int port = 0;
    const char* path = "/";
    int conns = 50;
    std::size_t size = 64;
    int pipeline = 1;
    double duration = 5;
    double warmup = 1;
    bool text = false;
    bool idle = false;
    int idle_messages = 1;
    int serve_port = 0;
    int max_connecting = 128;     // concurrent connection attempts (listen backlogs are finite)
    double connect_timeout = 60;  // every handshake must be done by then
};

Options opt;

[[noreturn]] void usage(const char* why) {
    std::fprintf(stderr,
                 "wsload: %s\nusage: wsload --port P [--host H] [--path /] [--conns N] "
                 "[--size B] [--pipeline K] [--duration S] [--warmup S] [--text]\n"
                 "       wsload --port P --idle --conns N [--idle-messages M]\n"
                 "       wsload --serve P\n",
                 why);
    std::exit(2);
}

void parse_options(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) usage("missing value");
            return argv[++i];
        };
        if (a == "--host") {
            opt.host = value();
        } else if (a == "--port") {
            opt.port = std::atoi(value());
        } else if (a == "--path") {
            opt.path = value();
        } else if (a == "--conns" || a == "-c") {
            opt.conns = std::atoi(value());
        } else if (a == "--size" || a == "-s") {
            opt.size = std::strtoull(value(), nullptr, 10);
        } else if (a == "--pipeline") {
            opt.pipeline = std::atoi(value());
        } else if (a == "--duration" || a == "-d") {
            opt.duration = std::atof(value());
        } else if (a == "--warmup") {
            opt.warmup = std::atof(value());
        } else if (a == "--text") {
            opt.text = true;
        } else if (a == "--idle") {
            opt.idle = true;
        } else if (a == "--idle-messages") {
            opt.idle_messages = std::atoi(value());
        } else if (a == "--serve") {
            opt.serve_port = std::atoi(value());
        } else if (a == "--connect-timeout") {
            opt.connect_timeout = std::atof(value());
        } else if (a == "--max-connecting") {
            opt.max_connecting = std::atoi(value());
        } else {
            usage("unknown option");
        }
    }
    if (opt.serve_port == 0 && opt.port == 0) usage("--port or --serve is required");
    if (opt.conns < 1 || opt.pipeline < 1 || opt.duration <= 0 || opt.max_connecting < 1) {
        usage("bad numbers");
    }
}

void raise_nofile() {
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

double cpu_seconds() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// ---------------------------------------------------------------------------------------------
// WebSocket bits

std::string accept_for(std::string_view key) {
    std::string in(key);
    in += "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";  // RFC 6455 §1.3
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_Digest(in.data(), in.size(), digest, &n, EVP_sha1(), nullptr);
    unsigned char out[64];
    int len = EVP_EncodeBlock(out, digest, static_cast<int>(n));
    return std::string(reinterpret_cast<char*>(out), static_cast<std::size_t>(len));
}

std::string random_key(std::uint32_t& rng) {
    unsigned char raw[16];
    for (auto& b : raw) {
        rng = rng * 1664525u + 1013904223u;
        b = static_cast<unsigned char>(rng >> 24);
    }
    unsigned char out[32];
    int len = EVP_EncodeBlock(out, raw, 16);
    return std::string(reinterpret_cast<char*>(out), static_cast<std::size_t>(len));
}

void append_frame_header(std::string& out, int opcode, std::uint64_t len, bool masked) {
    out.push_back(static_cast<char>(0x80 | opcode));
    unsigned char bit = masked ? 0x80 : 0;
    if (len < 126) {
        out.push_back(static_cast<char>(bit | len));
    } else if (len < 65536) {
        out.push_back(static_cast<char>(bit | 126));
        out.push_back(static_cast<char>(len >> 8));
        out.push_back(static_cast<char>(len));
    } else {
        out.push_back(static_cast<char>(bit | 127));
        for (int i = 7; i >= 0; --i)
            out.push_back(static_cast<char>(len >> (8 * i)));
    }
}

// A masked client frame. The key only has to be there; servers unmask whatever it is.
std::string client_frame(int opcode, std::string_view payload, std::uint32_t key) {
    std::string out;
    append_frame_header(out, opcode, payload.size(), true);
    unsigned char k[4] = {static_cast<unsigned char>(key >> 24),
                          static_cast<unsigned char>(key >> 16),
                          static_cast<unsigned char>(key >> 8), static_cast<unsigned char>(key)};
    out.append(reinterpret_cast<char*>(k), 4);
    for (std::size_t i = 0; i < payload.size(); ++i)
        out.push_back(static_cast<char>(payload[i] ^ k[i & 3]));
    return out;
}

struct Frame {
    int opcode = 0;
    bool fin = false;
    bool masked = false;
    unsigned char mask[4] = {};
    std::size_t header = 0;
    std::uint64_t length = 0;
};

// Parses a frame header at `p`; false if more bytes are needed.
bool parse_frame(const unsigned char* p, std::size_t n, Frame& f) {
    if (n < 2) return false;
    f.fin = (p[0] & 0x80) != 0;
    f.opcode = p[0] & 0x0F;
    f.masked = (p[1] & 0x80) != 0;
    std::uint64_t len = p[1] & 0x7F;
    std::size_t h = 2;
    if (len == 126) {
        if (n < 4) return false;
        len = (std::uint64_t{p[2]} << 8) | p[3];
        h = 4;
    } else if (len == 127) {
        if (n < 10) return false;
        len = 0;
        for (int i = 2; i < 10; ++i)
            len = (len << 8) | p[i];
        h = 10;
    }
    if (f.masked) {
        if (n < h + 4) return false;
        std::memcpy(f.mask, p + h, 4);
        h += 4;
    }
    f.header = h;
    f.length = len;
    return true;
}

// ---------------------------------------------------------------------------------------------
// Latency histogram: 1 µs buckets below 10 ms, 100 µs buckets up to 10 s.

struct Histogram {
    std::vector<std::uint32_t> buckets = std::vector<std::uint32_t>(10000 + 99900 + 1);
    std::uint64_t count = 0;
    std::uint64_t max_us = 0;

    void add(std::uint64_t us) {
        std::size_t i =
            us < 10000 ? us
                       : std::min<std::uint64_t>(10000 + (us - 10000) / 100, buckets.size() - 1);
        ++buckets[i];
        ++count;
        max_us = std::max(max_us, us);
    }
    std::uint64_t percentile(double q) const {
        if (count == 0) return 0;
        auto want = static_cast<std::uint64_t>(q * static_cast<double>(count - 1)) + 1;
        std::uint64_t seen = 0;
        for (std::size_t i = 0; i < buckets.size(); ++i) {
            seen += buckets[i];
            if (seen >= want) return i < 10000 ? i : 10000 + (i - 10000) * 100;
        }
        return max_us;
    }
    void reset() {
        std::fill(buckets.begin(), buckets.end(), 0);
        count = 0;
        max_us = 0;
    }
};

// ---------------------------------------------------------------------------------------------
// Client

uv_loop_t* loop;

struct OwnedWrite {
    uv_write_t req;
    std::string data;
};

// Writes bytes the request owns (handshakes, pongs, the echo server's output).
void write_owned(uv_stream_t* stream, std::string&& data) {
    auto* w = new OwnedWrite;
    w->data = std::move(data);
    uv_buf_t b = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
    uv_write(&w->req, stream, &b, 1,
             [](uv_write_t* req, int) { delete reinterpret_cast<OwnedWrite*>(req); });
}

std::string json_escape(const std::string& s) {
    std::string out;
    for (char ch : s) {
        if (ch == '"' || ch == '\\') out.push_back('\\');
        if (static_cast<unsigned char>(ch) < 0x20) continue;
        out.push_back(ch);
    }
    return out;
}

char read_buffer[1 << 18];

void on_alloc(uv_handle_t*, std::size_t, uv_buf_t* buf) {
    *buf = uv_buf_init(read_buffer, sizeof read_buffer);
}

enum class Phase { kRampUp, kWarmup, kMeasure, kDone };

struct Stats {
    std::uint64_t messages = 0;
    std::uint64_t bytes = 0;
    std::uint64_t mismatches = 0;
    Histogram latency;
};

struct Conn;

struct Client {
    std::string frame;    // the masked message every connection sends
    std::string payload;  // what must come back
    std::vector<Conn*> conns;
    int next_to_connect = 0;
    int connecting = 0;
    int open = 0;
    int failed = 0;
    int ready = 0;  // idle mode: open and done with its echoes
    int lost = 0;   // closed by the server after the handshake
    Phase phase = Phase::kRampUp;
    Stats stats;
    std::string first_error;
    std::uint64_t measure_start_ns = 0;
    std::uint64_t measure_end_ns = 0;
    std::uint64_t start_ns = 0;
    double cpu_start = 0;
    double cpu_end = 0;
    uv_timer_t timer;
    uv_signal_t sigterm;
    uv_signal_t sigint;
    std::vector<uv_write_t*> free_writes;
};

Client client;

struct Conn {
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    std::string key;
    std::string in;                     // bytes not parsed yet
    std::deque<std::uint64_t> sent_ns;  // send times of the messages in flight
    std::uint64_t echoed = 0;
    bool handshake_done = false;
    bool closed = false;
    bool counted_ready = false;
};

void start_more_connections();
void maybe_all_connected();

void note_error(const std::string& e) {
    if (client.first_error.empty()) client.first_error = e;
}

uv_write_t* get_write() {
    if (client.free_writes.empty()) return new uv_write_t;
    uv_write_t* w = client.free_writes.back();
    client.free_writes.pop_back();
    return w;
}

void on_write(uv_write_t* req, int status) {
    if (status < 0 && status != UV_ECANCELED) {
        note_error(std::string("write: ") + uv_strerror(status));
    }
    client.free_writes.push_back(req);
}

void close_conn(Conn* c) {
    if (c->closed) return;
    c->closed = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp), nullptr);
}

void send_messages(Conn* c, int n) {
    if (c->closed || n <= 0) return;
    std::uint64_t now = uv_hrtime();
    uv_buf_t bufs[64];
    while (n > 0) {
        int k = std::min(n, 64);
        for (int i = 0; i < k; ++i) {
            bufs[i] = uv_buf_init(client.frame.data(), static_cast<unsigned>(client.frame.size()));
            c->sent_ns.push_back(now);
        }
        uv_write(get_write(), reinterpret_cast<uv_stream_t*>(&c->tcp), bufs,
                 static_cast<unsigned>(k), on_write);
        n -= k;
    }
}

void on_conn_lost(Conn* c, const char* why) {
    if (c->closed) return;
    if (c->handshake_done) {
        ++client.lost;
        --client.open;
    } else {
        ++client.failed;
        --client.connecting;
    }
    note_error(why);
    close_conn(c);
    if (!c->handshake_done) {
        start_more_connections();
        maybe_all_connected();
    }
}

// Consumes whole frames from `p`; returns the bytes used.
std::size_t consume_frames(Conn* c, const unsigned char* p, std::size_t n) {
    std::size_t used = 0;
    int echoes = 0;
    std::uint64_t now = 0;
    while (!c->closed) {
        Frame f;
        if (!parse_frame(p + used, n - used, f) || n - used < f.header + f.length) break;
        const unsigned char* payload = p + used + f.header;
        used += f.header + f.length;
        if (f.opcode == 1 || f.opcode == 2) {
            if (!f.fin) {
                note_error("fragmented echo");
                ++client.stats.mismatches;
            } else if (f.length != client.payload.size() ||
                       std::memcmp(payload, client.payload.data(), f.length) != 0) {
                ++client.stats.mismatches;
                note_error("echo differs from the message sent");
            }
            if (c->sent_ns.empty()) {
                note_error("echo without a message in flight");
                continue;
            }
            if (now == 0) now = uv_hrtime();
            if (client.phase == Phase::kMeasure) {
                client.stats.latency.add((now - c->sent_ns.front()) / 1000);
                ++client.stats.messages;
                client.stats.bytes += f.length;
            }
            c->sent_ns.pop_front();
            ++c->echoed;
            ++echoes;
        } else if (f.opcode == 9) {  // ping: answer with a masked pong
            write_owned(reinterpret_cast<uv_stream_t*>(&c->tcp),
                        client_frame(0xA,
                                     std::string_view(reinterpret_cast<const char*>(payload),
                                                      static_cast<std::size_t>(f.length)),
                                     0x01020304u));
        } else if (f.opcode == 8) {
            on_conn_lost(c, "the server sent a close frame");
        }
    }
    if (opt.idle) {
        if (!c->counted_ready && c->echoed >= static_cast<std::uint64_t>(opt.idle_messages)) {
            c->counted_ready = true;
            ++client.ready;
            maybe_all_connected();
        } else if (echoes > 0 && c->echoed < static_cast<std::uint64_t>(opt.idle_messages)) {
            send_messages(c, 1);
        }
    } else if (client.phase == Phase::kWarmup || client.phase == Phase::kMeasure) {
        send_messages(c, echoes);
    }
    return used;
}

bool finish_handshake(Conn* c) {
    // Returns false if the head is not complete yet.
    std::size_t end = c->in.find("\r\n\r\n");
    if (end == std::string::npos) {
        if (c->in.size() > 16384) on_conn_lost(c, "handshake response too long");
        return false;
    }
    std::string head = c->in.substr(0, end + 2);
    c->in.erase(0, end + 4);
    if (head.compare(0, 12, "HTTP/1.1 101") != 0) {
        on_conn_lost(c, ("handshake refused: " + head.substr(0, head.find('\r'))).c_str());
        return true;
    }
    std::string lower = head;
    for (auto& ch : lower)
        ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    std::size_t at = lower.find("\r\nsec-websocket-accept:");
    std::string expected = accept_for(c->key);
    if (at == std::string::npos) {
        on_conn_lost(c, "no Sec-WebSocket-Accept");
        return true;
    }
    at += 23;
    std::size_t eol = head.find("\r\n", at);
    std::string value = head.substr(at, eol - at);
    value.erase(0, value.find_first_not_of(" \t"));
    value.erase(value.find_last_not_of(" \t") + 1);
    if (value != expected) {
        on_conn_lost(c, "wrong Sec-WebSocket-Accept");
        return true;
    }
    c->handshake_done = true;
    --client.connecting;
    ++client.open;
    if (opt.idle) {
        if (opt.idle_messages > 0) {
            send_messages(c, 1);
        } else {
            c->counted_ready = true;
            ++client.ready;
        }
    }
    // Load mode: the messages start once every connection is open (maybe_all_connected), so
    // the handshakes never queue behind echo traffic.
    start_more_connections();
    maybe_all_connected();
    return true;
}

void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
    auto* c = static_cast<Conn*>(stream->data);
    if (nread < 0) {
        on_conn_lost(c, nread == UV_EOF ? "connection closed by the server"
                                        : uv_strerror(static_cast<int>(nread)));
        return;
    }
    if (nread == 0) return;
    auto n = static_cast<std::size_t>(nread);
    if (!c->handshake_done) {
        c->in.append(buf->base, n);
        if (!finish_handshake(c) || c->closed) return;
        std::size_t used =
            consume_frames(c, reinterpret_cast<const unsigned char*>(c->in.data()), c->in.size());
        c->in.erase(0, used);
        return;
    }
    if (c->in.empty()) {
        // NOTE(perf): the common case parses straight from the shared read buffer.
        auto* p = reinterpret_cast<const unsigned char*>(buf->base);
        std::size_t used = consume_frames(c, p, n);
        if (used < n && !c->closed) c->in.assign(buf->base + used, n - used);
        return;
    }
    c->in.append(buf->base, n);
    std::size_t used =
        consume_frames(c, reinterpret_cast<const unsigned char*>(c->in.data()), c->in.size());
    c->in.erase(0, used);
}

void on_connect(uv_connect_t* req, int status) {
    auto* c = static_cast<Conn*>(req->data);
    if (status < 0) {
        on_conn_lost(c, (std::string("connect: ") + uv_strerror(status)).c_str());
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    static std::uint32_t rng = 0x12345678u ^ static_cast<std::uint32_t>(uv_hrtime());
    c->key = random_key(rng);
    std::string request =
        std::string("GET ") + opt.path + " HTTP/1.1\r\nHost: " + opt.host + ":" +
        std::to_string(opt.port) +
        "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + c->key +
        "\r\nSec-WebSocket-Version: 13\r\n\r\n";
    write_owned(reinterpret_cast<uv_stream_t*>(&c->tcp), std::move(request));
    uv_read_start(reinterpret_cast<uv_stream_t*>(&c->tcp), on_alloc, on_read);
}

void start_more_connections() {
    sockaddr_in addr{};
    uv_ip4_addr(opt.host, opt.port, &addr);
    while (client.next_to_connect < opt.conns && client.connecting < opt.max_connecting) {
        Conn* c = client.conns[client.next_to_connect++];
        uv_tcp_init(loop, &c->tcp);
        c->tcp.data = c;
        c->connect_req.data = c;
        ++client.connecting;
        int r = uv_tcp_connect(&c->connect_req, &c->tcp, reinterpret_cast<sockaddr*>(&addr),
                               on_connect);
        if (r < 0) {
            ++client.failed;
            --client.connecting;
            note_error(std::string("connect: ") + uv_strerror(r));
            close_conn(c);
        }
    }
}

void print_idle_report() {
    std::printf(
        "{\"mode\": \"idle\", \"conns\": %d, \"open\": %d, \"ready\": %d, \"failed\": %d, "
        "\"lost\": %d, \"connect_s\": %.3f, \"first_error\": \"%s\"}\n",
        opt.conns, client.open, client.ready, client.failed, client.lost,
        (uv_hrtime() - client.start_ns) / 1e9, json_escape(client.first_error).c_str());
    std::fflush(stdout);
}

void stop_all() {
    client.phase = Phase::kDone;
    uv_timer_stop(&client.timer);
    for (Conn* c : client.conns) {
        if (c->tcp.data != nullptr) close_conn(c);
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&client.timer), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&client.sigterm), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&client.sigint), nullptr);
}

void on_timer(uv_timer_t*) {
    if (client.phase == Phase::kRampUp) {
        note_error("connect timeout: not every handshake was done in time");
        client.failed += opt.conns - client.open - client.failed;
        if (opt.idle) print_idle_report();
        stop_all();
    } else if (client.phase == Phase::kWarmup) {
        client.phase = Phase::kMeasure;
        client.stats = Stats{};
        client.measure_start_ns = uv_hrtime();
        client.cpu_start = cpu_seconds();
        // The harness starts its CPU accounting window at this line.
        std::printf("{\"event\": \"measure_start\"}\n");
        std::fflush(stdout);
        uv_timer_start(&client.timer, on_timer, static_cast<std::uint64_t>(opt.duration * 1000), 0);
    } else if (client.phase == Phase::kMeasure) {
        client.measure_end_ns = uv_hrtime();
        client.cpu_end = cpu_seconds();
        stop_all();
    }
}

void maybe_all_connected() {
    if (client.phase != Phase::kRampUp) return;
    if (client.next_to_connect < opt.conns || client.connecting > 0) return;
    if (opt.idle) {
        if (client.ready + client.failed + client.lost < opt.conns) return;
        client.phase = Phase::kMeasure;  // i.e. holding
        uv_timer_stop(&client.timer);
        print_idle_report();
        return;
    }
    if (client.failed > 0) {
        stop_all();  // a load run needs every connection
        return;
    }
    client.phase = Phase::kWarmup;
    for (Conn* c : client.conns)
        send_messages(c, opt.pipeline);
    uv_timer_start(&client.timer, on_timer, static_cast<std::uint64_t>(opt.warmup * 1000), 0);
}

void on_signal(uv_signal_t*, int) {
    if (opt.idle && client.phase == Phase::kRampUp) print_idle_report();  // interrupted early
    if (client.measure_end_ns == 0) {
        client.measure_end_ns = uv_hrtime();
        client.cpu_end = cpu_seconds();
    }
    stop_all();
}

int run_client() {
    client.payload.resize(opt.size);
    for (std::size_t i = 0; i < opt.size; ++i)
        client.payload[i] = static_cast<char>('a' + i % 26);  // valid UTF-8 for --text
    client.frame = client_frame(opt.text ? 1 : 2, client.payload, 0x5A17C0DEu);
    client.conns.reserve(static_cast<std::size_t>(opt.conns));
    for (int i = 0; i < opt.conns; ++i)
        client.conns.push_back(new Conn());  // zeroed: tcp.data == nullptr until used
    uv_timer_init(loop, &client.timer);
    uv_signal_init(loop, &client.sigterm);
    uv_signal_init(loop, &client.sigint);
    uv_signal_start(&client.sigterm, on_signal, SIGTERM);
    uv_signal_start(&client.sigint, on_signal, SIGINT);
    client.start_ns = uv_hrtime();
    uv_timer_start(&client.timer, on_timer, static_cast<std::uint64_t>(opt.connect_timeout * 1000),
                   0);
    start_more_connections();
    maybe_all_connected();
    uv_run(loop, UV_RUN_DEFAULT);
    if (opt.idle) {
        return client.failed > 0 ? 1 : 0;
    }
    double window = client.measure_start_ns != 0 && client.measure_end_ns > client.measure_start_ns
                        ? (client.measure_end_ns - client.measure_start_ns) / 1e9
                        : 0;
    double rate = window > 0 ? client.stats.messages / window : 0;
    double cpu = window > 0 ? (client.cpu_end - client.cpu_start) / window : 0;
    std::printf(
        "{\"mode\": \"load\", \"conns\": %d, \"size\": %zu, \"pipeline\": %d, \"text\": %s, "
        "\"open\": %d, \"failed\": %d, \"lost\": %d, \"duration_s\": %.4f, \"messages\": %llu, "
        "\"msgs_per_s\": %.1f, \"bytes_per_s\": %.1f, \"mismatches\": %llu, "
        "\"lat_p50_us\": %llu, \"lat_p99_us\": %llu, \"lat_max_us\": %llu, "
        "\"client_cpu\": %.4f, \"first_error\": \"%s\"}\n",
        opt.conns, opt.size, opt.pipeline, opt.text ? "true" : "false", client.open, client.failed,
        client.lost, window, static_cast<unsigned long long>(client.stats.messages), rate,
        window > 0 ? client.stats.bytes / window : 0.0,
        static_cast<unsigned long long>(client.stats.mismatches),
        static_cast<unsigned long long>(client.stats.latency.percentile(0.50)),
        static_cast<unsigned long long>(client.stats.latency.percentile(0.99)),
        static_cast<unsigned long long>(client.stats.latency.max_us), cpu,
        json_escape(client.first_error).c_str());
    return (client.failed > 0 || client.lost > 0 || client.stats.mismatches > 0 || window == 0) ? 1
                                                                                                : 0;
}

// ---------------------------------------------------------------------------------------------
// --serve: the native echo anchor

struct ServerConn {
    uv_tcp_t tcp;
    std::string in;
    bool upgraded = false;
    bool closing = false;
};

void on_server_close(uv_handle_t* h) {
    delete static_cast<ServerConn*>(h->data);
}

void server_close(ServerConn* s) {
    if (s->closing) return;
    s->closing = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&s->tcp), on_server_close);
}

void server_write(ServerConn* s, std::string&& data) {
    write_owned(reinterpret_cast<uv_stream_t*>(&s->tcp), std::move(data));
}

// The echo's output: written at once from a buffer every connection reuses, so an anchor
// message costs no malloc and no page fault; only what the socket does not take is copied.
std::string echo_out;

void server_write_echo(ServerConn* s) {
    auto* stream = reinterpret_cast<uv_stream_t*>(&s->tcp);
    std::size_t done = 0;
    if (stream->write_queue_size == 0) {
        uv_buf_t b = uv_buf_init(echo_out.data(), static_cast<unsigned>(echo_out.size()));
        int n = uv_try_write(stream, &b, 1);
        if (n > 0) done = static_cast<std::size_t>(n);
    }
    if (done < echo_out.size()) write_owned(stream, echo_out.substr(done));
    echo_out.clear();
}

void on_server_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
    auto* s = static_cast<ServerConn*>(stream->data);
    if (nread < 0) {
        server_close(s);
        return;
    }
    bool buffered = !s->upgraded || !s->in.empty();  // else the read buffer is parsed as is
    if (buffered) s->in.append(buf->base, static_cast<std::size_t>(nread));
    if (!s->upgraded) {
        std::size_t end = s->in.find("\r\n\r\n");
        if (end == std::string::npos) return;
        std::string lower = s->in.substr(0, end + 2);
        for (auto& ch : lower)
            ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        std::size_t at = lower.find("\r\nsec-websocket-key:");
        if (at == std::string::npos) {
            server_write(s, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            server_close(s);
            return;
        }
        at += 20;
        std::string key = s->in.substr(at, lower.find("\r\n", at) - at);
        key.erase(0, key.find_first_not_of(" \t"));
        key.erase(key.find_last_not_of(" \t") + 1);
        s->in.erase(0, end + 4);
        s->upgraded = true;
        server_write(s,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: " +
                         accept_for(key) + "\r\n\r\n");
    }
    // NOTE(perf): parse straight from the read buffer when nothing is left over, and unmask
    // eight bytes at a time, so the anchor costs about what a lean native server would.
    const char* data = buffered ? s->in.data() : buf->base;
    std::size_t size = buffered ? s->in.size() : static_cast<std::size_t>(nread);
    std::string& out = echo_out;
    out.clear();
    std::size_t used = 0;
    auto* p = reinterpret_cast<const unsigned char*>(data);
    while (true) {
        Frame f;
        std::size_t n = size - used;
        if (!parse_frame(p + used, n, f) || n < f.header + f.length) break;
        const unsigned char* payload = p + used + f.header;
        used += f.header + f.length;
        int op = f.opcode == 9 ? 0xA : f.opcode;
        if (f.opcode == 0xA) continue;
        append_frame_header(out, op, f.length, false);
        std::size_t at = out.size();
        auto len = static_cast<std::size_t>(f.length);
        out.append(reinterpret_cast<const char*>(payload), len);
        if (f.masked) {
            char* q = out.data() + at;
            std::uint64_t key8;
            unsigned char k8[8];
            for (int i = 0; i < 8; ++i)
                k8[i] = f.mask[i & 3];
            std::memcpy(&key8, k8, 8);
            std::size_t i = 0;
            for (; i + 8 <= len; i += 8) {
                std::uint64_t w;
                std::memcpy(&w, q + i, 8);
                w ^= key8;
                std::memcpy(q + i, &w, 8);
            }
            for (; i < len; ++i)
                q[i] = static_cast<char>(q[i] ^ f.mask[i & 3]);
        }
        if (f.opcode == 8) {
            server_write_echo(s);
            server_close(s);
            return;
        }
    }
    if (buffered) {
        s->in.erase(0, used);
    } else if (used < size) {
        s->in.assign(data + used, size - used);
    }
    if (!out.empty()) server_write_echo(s);
}

void on_server_connection(uv_stream_t* listener, int status) {
    if (status < 0) return;
    auto* s = new ServerConn;
    uv_tcp_init(loop, &s->tcp);
    s->tcp.data = s;
    if (uv_accept(listener, reinterpret_cast<uv_stream_t*>(&s->tcp)) != 0) {
        server_close(s);
        return;
    }
    uv_tcp_nodelay(&s->tcp, 1);
    uv_read_start(reinterpret_cast<uv_stream_t*>(&s->tcp), on_alloc, on_server_read);
}

int run_server() {
    uv_tcp_t listener;
    uv_tcp_init(loop, &listener);
    sockaddr_in addr{};
    uv_ip4_addr(opt.host, opt.serve_port, &addr);
    int r = uv_tcp_bind(&listener, reinterpret_cast<sockaddr*>(&addr), 0);
    if (r == 0) {
        r = uv_listen(reinterpret_cast<uv_stream_t*>(&listener), 4096, on_server_connection);
    }
    if (r < 0) {
        std::fprintf(stderr, "wsload --serve: %s\n", uv_strerror(r));
        return 1;
    }
    std::fprintf(stderr, "wsload: echo server on %s:%d\n", opt.host, opt.serve_port);
    uv_signal_t sigterm;
    uv_signal_init(loop, &sigterm);
    uv_signal_start(
        &sigterm, [](uv_signal_t*, int) { uv_stop(loop); }, SIGTERM);
    uv_run(loop, UV_RUN_DEFAULT);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    parse_options(argc, argv);
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    loop = uv_default_loop();
    return opt.serve_port != 0 ? run_server() : run_client();
}
