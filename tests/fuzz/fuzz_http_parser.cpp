// SPDX-License-Identifier: BSD-3-Clause
// libFuzzer target: HttpParser over arbitrary bytes.
//
// Input layout (see make_corpus.py):
//   byte 0     flags: bits 0-1 limits (0 default, 1 small, 2 tiny, 3 default),
//                     bit 2 pause after every message (as HttpConnection does),
//                     bit 3 second run feeds one byte at a time instead of two pieces
//   bytes 1-2  split offset (little endian, modulo the data size + 1)
//   rest       the byte stream from the client
//
// The stream is parsed twice: in one piece, and split (at the offset, or byte by byte).
// Invariants: no crash or sanitizer report; ParseResult is consistent (consumed within the
// input, a known error status); the sink sees head → body* → end per message, and every head
// respects the limits and our header checks; an error is sticky (later execute() calls report
// the same error, consume nothing and call nothing); both runs see the same events and the same
// error (a limit error may stand in for another one, see the end of LLVMFuzzerTestOneInput).
#include "core/config.hpp"
#include "core/http_parser.hpp"

#include "tests/fuzz/fuzz_check.hpp"
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace {

using cppuvicorn::core::HttpParser;
using cppuvicorn::core::ParseResult;
using cppuvicorn::core::ParserSink;
using cppuvicorn::core::RequestHead;
using cppuvicorn::core::ServerConfig;

ServerConfig make_config(std::uint8_t flags) {
    ServerConfig c;
    switch (flags & 3) {
        case 1:
            c.max_head_size = 256;
            c.max_url_size = 64;
            c.max_header_count = 8;
            break;
        case 2:
            c.max_head_size = 48;
            c.max_url_size = 12;
            c.max_header_count = 2;
            break;
        default:
            break;
    }
    return c;
}

// An independent statement of RFC 9110's tchar (lowercase only: names reach the sink
// lowercased), written differently from the parser's own check on purpose.
bool is_tchar_lower(unsigned char c) {
    constexpr std::string_view kSymbols = "!#$%&'*+-.^_`|~";
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           (c != 0 && kSymbols.find(static_cast<char>(c)) != std::string_view::npos);
}

class Transcript final : public ParserSink {
  public:
    Transcript(const ServerConfig& config, bool pause) : config_(config), pause_(pause) {}

    void on_head(const RequestHead& head) override {
        FUZZ_CHECK(!frozen);
        FUZZ_CHECK(!in_head_done_);
        in_head_done_ = true;
        FUZZ_CHECK(head.http_major == 1);
        FUZZ_CHECK(head.target.size() <= config_.max_url_size);
        for (unsigned char c : head.target)  // printable ASCII only (Uvicorn's URL parser too)
            FUZZ_CHECK(c > 0x20 && c < 0x7F);
        FUZZ_CHECK(head.headers.size() <= config_.max_header_count);
        std::size_t total = head.target.size();
        std::string e = "H ";
        e.append(head.method).append(" ").append(head.target);
        e += head.http_minor == 0 ? " 1.0" : " 1.1";
        e += head.keep_alive ? " ka" : " close";
        if (head.upgrade) e += " upgrade";
        if (head.has_body) e += " body";
        if (head.expect_continue) e += " 100";
        for (const auto& h : head.headers) {
            FUZZ_CHECK(!h.name.empty());
            for (unsigned char c : h.name)
                FUZZ_CHECK(is_tchar_lower(c));
            for (unsigned char c : h.value)
                FUZZ_CHECK((c >= 0x20 || c == '\t') && c != 0x7f);
            if (!h.value.empty()) {
                FUZZ_CHECK(h.value.back() != ' ' && h.value.back() != '\t');
            }
            total += h.name.size() + h.value.size();
            e.append("|").append(h.name).append(":").append(h.value);
        }
        FUZZ_CHECK(total <= config_.max_head_size);
        events.push_back(std::move(e));
    }
    void on_body(std::string_view chunk) override {
        FUZZ_CHECK(!frozen);
        FUZZ_CHECK(in_head_done_);
        // Chunk boundaries depend on the feed: merge consecutive pieces.
        if (events.empty() || events.back().rfind("B ", 0) != 0) events.emplace_back("B ");
        events.back().append(chunk);
    }
    int on_message_end() override {
        FUZZ_CHECK(!frozen);
        FUZZ_CHECK(in_head_done_);
        in_head_done_ = false;
        events.emplace_back("E");
        return pause_ ? kPause : 0;
    }

    std::vector<std::string> events;
    bool frozen = false;  // set after an error: no more sink calls allowed

  private:
    const ServerConfig& config_;
    bool pause_;
    bool in_head_done_ = false;
};

struct Outcome {
    std::vector<std::string> events;
    int status = 0;  // 0: no error
    std::string detail;
};

// Feeds `pieces` in order, resuming after every pause, until the end or the first error.
Outcome run(const ServerConfig& config, bool pause, const std::vector<std::string_view>& pieces) {
    Transcript sink(config, pause);
    HttpParser parser(sink, config);
    Outcome out;
    for (std::string_view piece : pieces) {
        while (true) {
            ParseResult r = parser.execute(piece);
            FUZZ_CHECK(r.consumed <= piece.size());
            if (r.kind == ParseResult::Kind::kNeedMore) {
                FUZZ_CHECK(r.consumed == piece.size());
                break;
            }
            if (r.kind == ParseResult::Kind::kPaused) {
                FUZZ_CHECK(!parser.in_message());
                piece.remove_prefix(r.consumed);
                parser.resume();
                if (piece.empty()) break;
                continue;
            }
            // kError
            FUZZ_CHECK(r.status == 400 || r.status == 414 || r.status == 431 || r.status == 505);
            FUZZ_CHECK(!r.detail.empty());
            out.status = r.status;
            out.detail = std::string(r.detail);
            // Sticky: the rest of this piece, a fresh valid request, and an empty feed all
            // report the same error without consuming or calling anything.
            sink.frozen = true;
            piece.remove_prefix(r.consumed);
            for (std::string_view again :
                 {piece, std::string_view("GET / HTTP/1.1\r\nhost: a\r\n\r\n"),
                  std::string_view()}) {
                ParseResult r2 = parser.execute(again);
                FUZZ_CHECK(r2.kind == ParseResult::Kind::kError);
                FUZZ_CHECK(r2.status == r.status);
                FUZZ_CHECK(r2.detail == out.detail);
                FUZZ_CHECK(r2.consumed == 0);
            }
            out.events = std::move(sink.events);
            return out;
        }
    }
    out.events = std::move(sink.events);
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 3) return 0;
    const std::uint8_t flags = data[0];
    const std::size_t offset = data[1] | (std::size_t{data[2]} << 8);
    const std::string_view stream(reinterpret_cast<const char*>(data + 3), size - 3);
    const ServerConfig config = make_config(flags);
    const bool pause = (flags & 4) != 0;

    Outcome whole = run(config, pause, {stream});

    std::vector<std::string_view> pieces;
    if ((flags & 8) != 0) {
        for (std::size_t i = 0; i < stream.size(); ++i)
            pieces.push_back(stream.substr(i, 1));
    } else {
        std::size_t at = offset % (stream.size() + 1);
        pieces = {stream.substr(0, at), stream.substr(at)};
    }
    Outcome split = run(config, pause, pieces);

    // The same events and the same verdict. Which error wins may depend on the split when the
    // input has several defects: the limits (414, 431) are checked per span callback, which
    // llhttp makes at the end of each buffer, while its own character checks run per byte
    // (e.g. an over-long URL with a control character: 414 in pieces, 400 in one buffer; or a
    // head over both the size and the count limit: 431 either way, with either reason).
    FUZZ_CHECK(whole.events == split.events);
    FUZZ_CHECK((whole.status == 0) == (split.status == 0));
    // Likewise the CR/LF scan runs over a whole buffer before llhttp: a bare CR or LF late in
    // one buffer wins over an earlier defect llhttp would report (same status, 400); and the
    // non-ASCII target check runs per URL span, like the limits.
    auto limit = [](int status) { return status == 414 || status == 431; };
    auto split_dependent = [](std::string_view detail) {
        return detail == cppuvicorn::core::kBareCrLf || detail == cppuvicorn::core::kBadTargetByte;
    };
    if (!limit(whole.status) && !limit(split.status)) {
        FUZZ_CHECK(whole.status == split.status);
        if (!split_dependent(whole.detail) && !split_dependent(split.detail))
            FUZZ_CHECK(whole.detail == split.detail);
    }
    return 0;
}
