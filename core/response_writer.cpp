// SPDX-License-Identifier: BSD-3-Clause
#include "core/response_writer.hpp"

#include <fmt/format.h>

#include <array>
#include <charconv>
#include <cstring>

namespace cppuvicorn::core {

namespace {

struct Reason {
    int status;
    const char* text;
};

constexpr Reason kReasons[] = {
    {100, "Continue"},
    {101, "Switching Protocols"},
    {102, "Processing"},
    {103, "Early Hints"},
    {200, "OK"},
    {201, "Created"},
    {202, "Accepted"},
    {203, "Non-Authoritative Information"},
    {204, "No Content"},
    {205, "Reset Content"},
    {206, "Partial Content"},
    {207, "Multi-Status"},
    {208, "Already Reported"},
    {226, "IM Used"},
    {300, "Multiple Choices"},
    {301, "Moved Permanently"},
    {302, "Found"},
    {303, "See Other"},
    {304, "Not Modified"},
    {305, "Use Proxy"},
    {307, "Temporary Redirect"},
    {308, "Permanent Redirect"},
    {400, "Bad Request"},
    {401, "Unauthorized"},
    {402, "Payment Required"},
    {403, "Forbidden"},
    {404, "Not Found"},
    {405, "Method Not Allowed"},
    {406, "Not Acceptable"},
    {407, "Proxy Authentication Required"},
    {408, "Request Timeout"},
    {409, "Conflict"},
    {410, "Gone"},
    {411, "Length Required"},
    {412, "Precondition Failed"},
    {413, "Request Entity Too Large"},
    {414, "Request-URI Too Long"},
    {415, "Unsupported Media Type"},
    {416, "Requested Range Not Satisfiable"},
    {417, "Expectation Failed"},
    {418, "I'm a Teapot"},
    {421, "Misdirected Request"},
    {422, "Unprocessable Entity"},
    {423, "Locked"},
    {424, "Failed Dependency"},
    {425, "Too Early"},
    {426, "Upgrade Required"},
    {428, "Precondition Required"},
    {429, "Too Many Requests"},
    {431, "Request Header Fields Too Large"},
    {451, "Unavailable For Legal Reasons"},
    {500, "Internal Server Error"},
    {501, "Not Implemented"},
    {502, "Bad Gateway"},
    {503, "Service Unavailable"},
    {504, "Gateway Timeout"},
    {505, "HTTP Version Not Supported"},
    {506, "Variant Also Negotiates"},
    {507, "Insufficient Storage"},
    {508, "Loop Detected"},
    {510, "Not Extended"},
    {511, "Network Authentication Required"},
};

// Uvicorn's HEADER_RE: CTLs, separators and whitespace are not allowed in names. The table
// gives each allowed byte in lower case (names go out lower-cased, as Uvicorn sends them) and 0
// for each byte that is not allowed: one lookup per byte validates and lowers.
constexpr std::array<char, 256> kNameBytes = [] {
    std::array<char, 256> t{};
    for (int c = 0x21; c < 0x7f; ++c)
        t[c] = static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
    for (unsigned char c : std::string_view("()<>@,;:[]={}\\\""))
        t[c] = 0;
    for (int c = 0x80; c < 0x100; ++c)
        t[c] = static_cast<char>(c);
    return t;
}();

// Uvicorn's HEADER_VALUE_RE: CTLs other than HTAB are not allowed in values (this is what
// keeps CR/LF, and so response splitting, off the wire).
constexpr std::array<bool, 256> kBadValueBytes = [] {
    std::array<bool, 256> t{};
    for (int c = 0; c < 0x20; ++c)
        t[c] = c != '\t';
    t[0x7f] = true;
    return t;
}();

bool valid_value(std::string_view value) {
    bool bad = false;
    for (unsigned char c : value)
        bad |= kBadValueBytes[c];
    return !bad;
}

// Copies `name` lower-cased to `p` and returns the end; nullptr if the name is empty or has a
// byte HEADER_RE refuses.
char* put_name(char* p, std::string_view name) {
    if (name.empty()) return nullptr;
    for (unsigned char c : name) {
        const char lower = kNameBytes[c];
        if (lower == 0) return nullptr;
        *p++ = lower;
    }
    return p;
}

char* put(char* p, std::string_view s) {
    if (s.empty()) return p;  // an empty view may have no data pointer: not for memcpy
    std::memcpy(p, s.data(), s.size());
    return p + s.size();
}

bool iequals(std::string_view a, std::string_view lower) {
    if (a.size() != lower.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        char c = a[i];
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
        if (c != lower[i]) return false;
    }
    return true;
}

// "close" among the comma-separated tokens of a Connection value (RFC 9110 §7.6.1).
bool has_close_token(std::string_view v) {
    while (!v.empty()) {
        std::size_t comma = v.find(',');
        std::string_view token = v.substr(0, comma);
        while (!token.empty() && (token.front() == ' ' || token.front() == '\t')) {
            token.remove_prefix(1);
        }
        while (!token.empty() && (token.back() == ' ' || token.back() == '\t')) {
            token.remove_suffix(1);
        }
        if (iequals(token, "close")) return true;
        if (comma == std::string_view::npos) break;
        v.remove_prefix(comma + 1);
    }
    return false;
}

}  // namespace

bool parse_content_length(std::string_view v, std::uint64_t& out) {
    const auto ows = [](char c) { return c == ' ' || c == '\t'; };
    while (!v.empty() && ows(v.front()))
        v.remove_prefix(1);
    while (!v.empty() && ows(v.back()))
        v.remove_suffix(1);
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    return ec == std::errc() && p == v.data() + v.size() && !v.empty();
}

StatusLines::StatusLines() {
    for (int s = 100; s < 600; ++s)
        lines_[s - 100] = fmt::format("HTTP/1.1 {} \r\n", s);
    for (const auto& r : kReasons)
        set_reason(r.status, r.text);
}

void StatusLines::set_reason(int status, std::string_view reason) {
    if (status < 100 || status > 599) return;
    lines_[status - 100] = fmt::format("HTTP/1.1 {} {}\r\n", status, reason);
}

HeaderError write_response_head(std::string& out, const StatusLines& lines, int status,
                                std::span<const Header> headers, const RequestInfo& req,
                                std::string_view date_line, std::string_view default_headers,
                                ResponseState& state) {
    // 1xx statuses are interim (RFC 9110 §15.2), never the answer: a client that read one as
    // such would take the connection's next response for this request's.
    if (status < 200 || status > 599) return HeaderError::kBadStatus;
    static constexpr std::string_view kClose = "connection: close\r\n";
    static constexpr std::string_view kChunked = "transfer-encoding: chunked\r\n";
    const std::string_view status_line = lines.line(status);
    // An upper bound of the head's size: one resize, then plain stores (this runs once per
    // response; appending piece by piece re-checked the capacity for every piece).
    std::size_t size = status_line.size() + date_line.size() + default_headers.size() +
                       kClose.size() + kChunked.size() + 2;
    for (const auto& h : headers)
        size += h.name.size() + h.value.size() + 4;
    const std::size_t start = out.size();
    out.resize(start + size);
    char* p = out.data() + start;
    p = put(p, status_line);
    p = put(p, date_line);
    p = put(p, default_headers);

    HeaderError error = HeaderError::kNone;
    bool has_length = false;
    bool chunked = false;
    bool close = false;
    std::uint64_t length = 0;
    for (const auto& h : headers) {
        char* name = p;
        p = put_name(p, h.name);
        if (p == nullptr) {
            error = HeaderError::kBadName;
            break;
        }
        if (!valid_value(h.value)) {
            error = HeaderError::kBadValue;
            break;
        }
        const std::string_view lname(name, h.name.size());
        *p++ = ':';
        *p++ = ' ';
        p = put(p, h.value);
        *p++ = '\r';
        *p++ = '\n';
        if (lname == "content-length") {
            // As Uvicorn, a length that is not a number fails where it stands. A second length
            // must say the same as the first: two different ones make the response unreadable
            // (RFC 9112 §6.3), and the proxy in front may believe either.
            std::uint64_t n = 0;
            if (!parse_content_length(h.value, n) || (has_length && n != length)) {
                error = HeaderError::kBadValue;
                break;
            }
            length = n;
            has_length = true;
        } else if (lname == "transfer-encoding") {
            if (iequals(h.value, "chunked")) chunked = true;
        } else if (lname == "connection") {
            if (has_close_token(h.value)) close = true;
        }
    }
    if (error != HeaderError::kNone) {
        out.resize(start);
        return error;
    }
    // Uvicorn 0.54: a connection that will not be kept alive says so, once.
    state.keep_alive = req.keep_alive && !close;
    if (!state.keep_alive && !close) p = put(p, kClose);

    const bool no_body = req.head_method || status == 204 || status == 304;
    state.body_refused = false;
    if (no_body) {
        state.framing = Framing::kNoBody;
        state.body_refused = !req.head_method && !has_length && !chunked;
    } else if (chunked && !req.http10) {
        state.framing = Framing::kChunked;
    } else if (has_length) {
        state.framing = Framing::kContentLength;
        state.remaining = length;
    } else if (!req.http10) {
        // RFC 9112 §6.1: chunked only to HTTP/1.1 clients.
        state.framing = Framing::kChunked;
        p = put(p, kChunked);
    } else {
        // RFC 9112 §6.3: an HTTP/1.0 body without a length ends with the connection.
        state.framing = Framing::kUntilClose;
        state.keep_alive = false;
    }
    *p++ = '\r';
    *p++ = '\n';
    out.resize(static_cast<std::size_t>(p - out.data()));
    return HeaderError::kNone;
}

void write_body_chunk(std::string& out, const ResponseState& state, std::string_view data) {
    if (data.empty() || state.framing == Framing::kNoBody) return;
    if (state.framing == Framing::kChunked) {
        char size[24];
        auto r = std::to_chars(size, size + sizeof size, data.size(), 16);
        out.reserve(out.size() + data.size() + 24);
        out.append(size, r.ptr);
        out.append("\r\n", 2);
        out.append(data);
        out.append("\r\n", 2);
    } else {
        out.append(data);
    }
}

void write_body_end(std::string& out, const ResponseState& state) {
    if (state.framing == Framing::kChunked) out.append("0\r\n\r\n", 5);
}

void write_simple_response(std::string& out, const StatusLines& lines, int status,
                           std::string_view date_line, std::string_view default_headers,
                           std::string_view body) {
    out.append(lines.line(status));
    out.append(date_line);
    out.append(default_headers);
    fmt::format_to(std::back_inserter(out),
                   "content-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n"
                   "connection: close\r\n\r\n",
                   body.size());
    out.append(body);
}

}  // namespace cppuvicorn::core
