// SPDX-License-Identifier: BSD-3-Clause
// libFuzzer target: the response head writer (core/response_writer.hpp) on arbitrary headers.
//
// Input layout: byte 0: bit 0 HEAD request, bit 1 HTTP/1.0, bit 2 keep-alive allowed; bytes 1-2:
// the status (big-endian, so out-of-range statuses occur too). Then one header per '\n'-separated
// line: the bytes before the first ':' are the name, the rest the value (a line without ':' is a
// name with an empty value).
//
// Checked against a literal, byte-at-a-time transcription of the rules (Uvicorn's HEADER_RE and
// HEADER_VALUE_RE, content-lengths that agree, chunked only to HTTP/1.1, connection: close): the
// same error, or the same bytes and framing; on error the buffer is as it was; the head ends in
// an empty line. The writer sizes its buffer once from an upper bound and writes through a raw
// pointer: ASan checks that bound.
#include "core/request_handler.hpp"
#include "core/response_writer.hpp"

#include "tests/fuzz/fuzz_check.hpp"
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace cppuvicorn::core;

bool ref_valid_name(std::string_view name) {
    if (name.empty()) return false;
    for (unsigned char c : name) {
        if (c <= 0x20 || c == 0x7f) return false;
        if (std::string_view("()<>@,;:[]={}\\\"").find(static_cast<char>(c)) !=
            std::string_view::npos) {
            return false;
        }
    }
    return true;
}

bool ref_valid_value(std::string_view value) {
    for (unsigned char c : value) {
        if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
    }
    return true;
}

std::string lower(std::string_view s) {
    std::string out(s);
    for (char& c : out) {
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
    }
    return out;
}

std::string trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
        s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
        s.remove_suffix(1);
    return std::string(s);
}

bool ref_has_close(std::string_view v) {
    while (true) {
        std::size_t comma = v.find(',');
        if (lower(trim(v.substr(0, comma))) == "close") return true;
        if (comma == std::string_view::npos) return false;
        v.remove_prefix(comma + 1);
    }
}

struct RefHead {
    HeaderError error = HeaderError::kNone;
    std::string bytes;
    ResponseState state;
};

RefHead reference(const StatusLines& lines, int status, const std::vector<Header>& headers,
                  const RequestInfo& req, std::string_view date, std::string_view defaults) {
    RefHead r;
    if (status < 200 || status > 599) {  // 1xx: interim, never a final answer
        r.error = HeaderError::kBadStatus;
        return r;
    }
    // In header order, each header's name, then its value, then (for a content-length) its
    // length: digits between optional SP / HTAB, the same as any earlier length.
    bool has_length = false, chunked = false, close = false;
    std::uint64_t length = 0;
    for (const auto& h : headers) {
        if (!ref_valid_name(h.name)) {
            r.error = HeaderError::kBadName;
            return r;
        }
        if (!ref_valid_value(h.value)) {
            r.error = HeaderError::kBadValue;
            return r;
        }
        const std::string name = lower(h.name);
        if (name == "content-length") {
            std::string_view digits(h.value);
            const std::size_t first = digits.find_first_not_of(" \t");
            digits = first == std::string_view::npos
                         ? std::string_view()
                         : digits.substr(first, digits.find_last_not_of(" \t") - first + 1);
            std::uint64_t n = 0;
            auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
            if (digits.empty() || ec != std::errc() || p != digits.data() + digits.size() ||
                (has_length && n != length)) {
                r.error = HeaderError::kBadValue;
                return r;
            }
            length = n;
            has_length = true;
        } else if (name == "transfer-encoding" && lower(h.value) == "chunked") {
            chunked = true;
        } else if (name == "connection" && ref_has_close(h.value)) {
            close = true;
        }
    }
    r.bytes.append(lines.line(status)).append(date).append(defaults);
    for (const auto& h : headers)
        r.bytes.append(lower(h.name)).append(": ").append(h.value).append("\r\n");
    r.state.keep_alive = req.keep_alive && !close;
    if (!r.state.keep_alive && !close) r.bytes.append("connection: close\r\n");
    if (req.head_method || status == 204 || status == 304) {
        r.state.framing = Framing::kNoBody;
        r.state.body_refused = !req.head_method && !has_length && !chunked;
    } else if (chunked && !req.http10) {
        r.state.framing = Framing::kChunked;
    } else if (has_length) {
        r.state.framing = Framing::kContentLength;
        r.state.remaining = length;
    } else if (!req.http10) {
        r.state.framing = Framing::kChunked;
        r.bytes.append("transfer-encoding: chunked\r\n");
    } else {
        r.state.framing = Framing::kUntilClose;
        r.state.keep_alive = false;
    }
    r.bytes.append("\r\n");
    return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const StatusLines lines;
    if (size < 3) return 0;
    RequestInfo req;
    req.head_method = (data[0] & 1) != 0;
    req.http10 = (data[0] & 2) != 0;
    req.keep_alive = (data[0] & 4) != 0;
    const int status = (data[1] << 8) | data[2];
    std::string_view rest(reinterpret_cast<const char*>(data) + 3, size - 3);
    std::vector<Header> headers;
    while (!rest.empty()) {
        std::size_t nl = rest.find('\n');
        std::string_view line = rest.substr(0, nl);
        std::size_t colon = line.find(':');
        if (colon == std::string_view::npos) {
            headers.push_back({line, {}});
        } else {
            headers.push_back({line.substr(0, colon), line.substr(colon + 1)});
        }
        if (nl == std::string_view::npos) break;
        rest.remove_prefix(nl + 1);
    }
    constexpr std::string_view kDate = "date: Sun, 06 Nov 1994 08:49:37 GMT\r\n";
    constexpr std::string_view kDefaults = "server: cppuvicorn\r\n";
    const std::string before = (data[0] & 8) != 0 ? "earlier bytes" : "";

    std::string out = before;
    ResponseState state;
    HeaderError err =
        write_response_head(out, lines, status, headers, req, kDate, kDefaults, state);
    RefHead ref = reference(lines, status, headers, req, kDate, kDefaults);
    FUZZ_CHECK(err == ref.error);
    if (err != HeaderError::kNone) {
        FUZZ_CHECK(out == before);
        return 0;
    }
    FUZZ_CHECK(out == before + ref.bytes);
    FUZZ_CHECK(out.size() >= 4 && out.compare(out.size() - 4, 4, "\r\n\r\n") == 0);
    FUZZ_CHECK(state.framing == ref.state.framing);
    FUZZ_CHECK(state.keep_alive == ref.state.keep_alive);
    FUZZ_CHECK(state.body_refused == ref.state.body_refused);
    if (state.framing == Framing::kContentLength)
        FUZZ_CHECK(state.remaining == ref.state.remaining);
    return 0;
}
