// SPDX-License-Identifier: BSD-3-Clause
#include "core/http_parser.hpp"

#include <cstring>
#include <utility>

namespace cppuvicorn::core {

// llhttp calls these from inside llhttp_execute; never re-entered for the same parser.
template <auto Member, class... Args>
int parser_thunk(llhttp_t* p, Args... args) noexcept {
    auto& self = *static_cast<HttpParser*>(p->data);
    return (self.*Member)(args...);
}

struct ParserSettings {
    static llhttp_settings_t make() {
        llhttp_settings_t s;
        llhttp_settings_init(&s);
        s.on_message_begin = parser_thunk<&HttpParser::handle_message_begin>;
        s.on_url = parser_thunk<&HttpParser::handle_url, const char*, std::size_t>;
        s.on_header_field =
            parser_thunk<&HttpParser::handle_header_field, const char*, std::size_t>;
        s.on_header_value =
            parser_thunk<&HttpParser::handle_header_value, const char*, std::size_t>;
        s.on_headers_complete = parser_thunk<&HttpParser::handle_headers_complete>;
        s.on_body = parser_thunk<&HttpParser::handle_body, const char*, std::size_t>;
        s.on_message_complete = parser_thunk<&HttpParser::handle_message_complete>;
        s.on_chunk_header = parser_thunk<&HttpParser::handle_chunk_header>;
        s.on_chunk_extension_name =
            parser_thunk<&HttpParser::handle_chunk_extension_name, const char*, std::size_t>;
        s.on_chunk_extension_name_complete =
            parser_thunk<&HttpParser::handle_chunk_extension_name_complete>;
        return s;
    }
};

namespace {

const llhttp_settings_t kSettings = ParserSettings::make();

// RFC 9110 §5.6.2 tchar.
bool is_tchar(unsigned char c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
    switch (c) {
        case '!':
        case '#':
        case '$':
        case '%':
        case '&':
        case '\'':
        case '*':
        case '+':
        case '-':
        case '.':
        case '^':
        case '_':
        case '`':
        case '|':
        case '~':
            return true;
        default:
            return false;
    }
}

bool valid_field_name(std::string_view name) {
    if (name.empty()) return false;
    for (unsigned char c : name) {
        if (!is_tchar(c)) return false;
    }
    return true;
}

// Field values may hold VCHAR, obs-text, SP and HTAB only: no CR, LF or NUL (this also
// rejects obs-fold, RFC 9112 §5.2, which this llhttp would otherwise fold in).
bool valid_field_value(std::string_view value) {
    for (unsigned char c : value) {
        if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
    }
    return true;
}

// The request target's form, as Uvicorn's URL parser (httptools' http_parser_parse_url)
// accepts it: origin-form ("/..."), "*", or absolute-form: an alphabetic scheme, "://",
// optional userinfo "...@", a host of letters, digits, '.' and '-' (or an IPv6 literal in
// brackets), an optional port of 1 to 5 digits up to 65535, then "/...", "?..." or "#..." or
// nothing. Its bytes are checked as they arrive (printable ASCII only).
bool valid_target_form(std::string_view t) {
    if (t.empty()) return false;
    if (t.front() == '/' || t == "*") return true;
    std::size_t i = 0;
    auto alpha = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
    auto digit = [](char c) { return c >= '0' && c <= '9'; };
    while (i < t.size() && alpha(t[i]))
        ++i;
    if (i == 0 || t.substr(i, 3) != "://") return false;
    std::string_view authority = t.substr(i + 3);
    authority = authority.substr(0, authority.find_first_of("/?#"));
    if (auto at = authority.rfind('@'); at != std::string_view::npos) {
        authority.remove_prefix(at + 1);
    }
    std::string_view port;
    if (!authority.empty() && authority.front() == '[') {
        auto close = authority.find(']');
        if (close == std::string_view::npos || close == 1) return false;
        for (char c : authority.substr(1, close - 1)) {
            if (!(digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == ':' ||
                  c == '.')) {
                return false;
            }
        }
        std::string_view rest = authority.substr(close + 1);
        if (!rest.empty()) {
            if (rest.front() != ':') return false;
            port = rest.substr(1);
            if (port.empty()) return false;
        }
    } else {
        auto colon = authority.find(':');
        std::string_view host = authority.substr(0, colon);
        if (host.empty()) return false;
        for (char c : host) {
            if (!(alpha(c) || digit(c) || c == '.' || c == '-')) return false;
        }
        if (colon != std::string_view::npos) {
            port = authority.substr(colon + 1);
            if (port.empty()) return false;
        }
    }
    if (port.size() > 5) return false;
    unsigned value = 0;
    for (char c : port) {
        if (!digit(c)) return false;
        value = value * 10 + static_cast<unsigned>(c - '0');
    }
    return value <= 65535;
}

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        char c = a[i];
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
        if (c != b[i]) return false;
    }
    return true;
}

}  // namespace

HttpParser::HttpParser(ParserSink& sink, const ServerConfig& config)
    : sink_(sink), config_(config) {
    llhttp_init(&parser_, HTTP_REQUEST, &kSettings);
    parser_.data = this;
}

struct HttpParser::BufferSet {
    std::string head;
    std::vector<RawHeader> raw;
    std::vector<Header> headers;
};

namespace {
// Sets kept for reuse per thread (a few KiB each), and the largest head buffer worth keeping:
// one grown by a huge request head is freed instead.
constexpr std::size_t kPooledSetsMax = 256;
constexpr std::size_t kPooledHeadMax = 16 * 1024;
constexpr std::size_t kPooledHeadersMax = 128;
}  // namespace

std::vector<HttpParser::BufferSet>& HttpParser::buffer_pool() {
    thread_local std::vector<BufferSet> pool;
    return pool;
}

void HttpParser::take_buffers() {
    has_buffers_ = true;
    auto& pool = buffer_pool();
    if (pool.empty()) {
        head_buf_.reserve(1024);
        raw_headers_.reserve(16);
        head_.headers.reserve(16);
        return;
    }
    BufferSet& set = pool.back();
    head_buf_.swap(set.head);
    raw_headers_.swap(set.raw);
    head_.headers.swap(set.headers);
    pool.pop_back();
}

void HttpParser::park_buffers() {
    if (!has_buffers_ || in_message_) return;
    has_buffers_ = false;
    head_.method = {};
    head_.target = {};
    head_buf_.clear();
    raw_headers_.clear();
    head_.headers.clear();
    auto& pool = buffer_pool();
    if (pool.size() < kPooledSetsMax && head_buf_.capacity() <= kPooledHeadMax &&
        raw_headers_.capacity() <= kPooledHeadersMax &&
        head_.headers.capacity() <= kPooledHeadersMax) {
        BufferSet& set = pool.emplace_back();
        set.head.swap(head_buf_);
        set.raw.swap(raw_headers_);
        set.headers.swap(head_.headers);
    } else {
        std::string().swap(head_buf_);
        std::vector<RawHeader>().swap(raw_headers_);
        std::vector<Header>().swap(head_.headers);
    }
}

int HttpParser::fail(const char* reason) {
    user_error_ = reason;
    llhttp_set_error_reason(&parser_, reason);
    return HPE_USER;
}

bool HttpParser::grow_head(std::size_t len) {
    return head_buf_.size() + len <= config_.max_head_size;
}

int HttpParser::handle_message_begin() {
    if (!has_buffers_) take_buffers();
    in_message_ = true;
    head_done_ = false;
    in_value_ = false;
    head_buf_.clear();
    raw_headers_.clear();
    url_ = {};
    body_bytes_ = 0;
    return 0;
}

int HttpParser::handle_url(const char* at, std::size_t len) {
    if (url_.len + len > config_.max_url_size) return fail("414:request target too long");
    // A request target is printable ASCII (RFC 9112 §3.2, RFC 3986). llhttp lets HTAB, FF and
    // bytes >= 0x80 (raw UTF-8, say) through; Uvicorn's URL parser answers them 400, so do we.
    // NOTE(perf): a plain loop. Targets are short (often "/"), and the vectorised form the
    // compiler makes of a branch-free one costs 80 instructions of set-up per request.
    for (std::size_t i = 0; i < len; ++i) {
        if (static_cast<unsigned char>(static_cast<unsigned char>(at[i]) - 0x21) > 0x5D) {
            return fail("400:invalid byte in the request target");  // not 0x21..0x7E
        }
    }
    if (!grow_head(len)) return fail("431:request head too large");
    if (url_.len == 0) url_.offset = static_cast<std::uint32_t>(head_buf_.size());
    head_buf_.append(at, len);
    url_.len += static_cast<std::uint32_t>(len);
    return 0;
}

int HttpParser::handle_header_field(const char* at, std::size_t len) {
    // Trailers (after a chunked body) are ignored: appending them could move head_buf_ under
    // the views the handler still holds.
    if (head_done_) return 0;
    if (!grow_head(len)) return fail("431:request head too large");
    if (raw_headers_.empty() || in_value_) {
        if (raw_headers_.size() >= config_.max_header_count) return fail("431:too many headers");
        raw_headers_.push_back({{static_cast<std::uint32_t>(head_buf_.size()), 0}, {}});
        in_value_ = false;
    }
    // Header names are ASCII tokens (llhttp checked them): lowercase while copying.
    std::size_t start = head_buf_.size();
    head_buf_.append(at, len);
    for (std::size_t i = start; i < head_buf_.size(); ++i) {
        char& c = head_buf_[i];
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
    }
    raw_headers_.back().name.len += static_cast<std::uint32_t>(len);
    return 0;
}

int HttpParser::handle_header_value(const char* at, std::size_t len) {
    if (head_done_) return 0;
    if (!grow_head(len)) return fail("431:request head too large");
    auto& h = raw_headers_.back();
    // llhttp 8.1 accepts obs-fold (RFC 9112 §5.2 lets a server reject it with 400; we do).
    if (follows_fold(at, len)) return fail("400:obsolete line folding in header value");
    if (!in_value_) {
        in_value_ = true;
        h.value.offset = static_cast<std::uint32_t>(head_buf_.size());
    }
    head_buf_.append(at, len);
    h.value.len += static_cast<std::uint32_t>(len);
    return 0;
}

// True if this piece of a header value comes after LF + SP/HTAB: the continuation line of an
// obs-fold. The LF may lie in an earlier execute() call's buffer (tail_). An empty value is
// reported at the start of the next line, after a bare LF: that is not a fold.
bool HttpParser::follows_fold(const char* at, std::size_t len) const {
    auto space = [](char c) { return c == ' ' || c == '\t'; };
    std::size_t spaces = 0;
    while (spaces < len && space(at[spaces]))
        ++spaces;
    const char* p = at;
    while (p > exec_begin_ && space(p[-1])) {
        --p;
        ++spaces;
    }
    if (p > exec_begin_) return spaces > 0 && p[-1] == '\n';
    return (spaces > 0 && tail_ != Tail::kOther) || tail_ == Tail::kLfSpace;
}

int HttpParser::handle_headers_complete() {
    head_done_ = true;
    const char* base = head_buf_.data();
    auto view = [base](Span s) { return std::string_view(base + s.offset, s.len); };
    head_.method = llhttp_method_name(static_cast<llhttp_method_t>(parser_.method));
    head_.target = view(url_);
    if (!valid_target_form(head_.target)) return fail("400:invalid request target");
    head_.http_major = parser_.http_major;
    head_.http_minor = parser_.http_minor;
    head_.keep_alive = llhttp_should_keep_alive(&parser_) != 0;
    head_.upgrade = parser_.upgrade != 0;
    head_.has_body = (parser_.flags & F_CHUNKED) != 0 ||
                     ((parser_.flags & F_CONTENT_LENGTH) != 0 && parser_.content_length > 0);
    head_.expect_continue = false;
    head_.headers.clear();
    bool transfer_encoding = (parser_.flags & F_TRANSFER_ENCODING) != 0;
    for (const auto& raw : raw_headers_) {
        Header h{view(raw.name), view(raw.value)};
        if (!valid_field_name(h.name)) return fail("400:invalid header name");
        if (!valid_field_value(h.value)) return fail("400:invalid header value");
        // llhttp keeps trailing whitespace of values (RFC 9110 §5.5 says strip it).
        while (!h.value.empty() && (h.value.back() == ' ' || h.value.back() == '\t')) {
            h.value.remove_suffix(1);
        }
        if (h.name == "expect" && iequals(h.value, "100-continue")) head_.expect_continue = true;
        if (h.name == "transfer-encoding") {
            // llhttp skips an empty one, so "chunked" plus an empty field would pass as chunked;
            // a proxy that takes the empty field as "no coding" would frame it differently.
            if (h.value.empty()) return fail("400:empty Transfer-Encoding");
            transfer_encoding = true;
        }
        head_.headers.push_back(h);
    }
    if (head_.http_major != 1) return fail("505:HTTP version not supported");
    // RFC 9112 §6.3: a request whose Transfer-Encoding does not end in chunked has no knowable
    // length: 400 and close. llhttp finds this only after on_headers_complete, so the app would
    // already have the head; and not at all for an upgrade (or CONNECT) request, whose body it
    // would hand back as the next request.
    if (transfer_encoding && (parser_.flags & F_CHUNKED) == 0) {
        return fail("400:Request has invalid `Transfer-Encoding`");
    }
    // A declared length over the limit is answered before any of the body is read (and before
    // a 100 Continue could invite it). A chunked body is counted as it arrives (handle_body).
    if (config_.max_body_size != 0 && (parser_.flags & F_CONTENT_LENGTH) != 0 &&
        parser_.content_length > config_.max_body_size) {
        return fail("413:content-length over the request body limit");
    }
    sink_.on_head(head_);
    return 0;
}

int HttpParser::handle_body(const char* at, std::size_t len) {
    body_bytes_ += len;
    if (config_.max_body_size != 0 && body_bytes_ > config_.max_body_size) {
        return fail("413:chunked request body over the request body limit");
    }
    sink_.on_body({at, len});
    return 0;
}

int HttpParser::handle_message_complete() {
    in_message_ = false;
    scan_head_ = true;
    scan_started_ = false;
    scan_line_ = 0;
    int r = sink_.on_message_end();
    if (r != 0) return r;
    // The next message's head must be scanned before llhttp reads it: stop here, execute()
    // scans and continues.
    auto_resume_ = true;
    return ParserSink::kPause;
}

// The last chunk's size line: the trailer section follows, whose lines (and the blank line that
// ends the message) must end in CRLF like the head's: stop so execute() scans them first.
int HttpParser::handle_chunk_header() {
    if (parser_.content_length != 0) return 0;
    scan_head_ = true;
    scan_started_ = true;  // a blank line now ends the message
    scan_line_ = 0;
    scan_last_ = '\n';
    auto_resume_ = true;
    return ParserSink::kPause;
}

// RFC 9112 §7.1.1: chunk-ext-name is a token, never empty (llhttp 8.1 accepts ";=value").
int HttpParser::handle_chunk_extension_name(const char*, std::size_t len) {
    ext_name_len_ += len;
    return 0;
}

int HttpParser::handle_chunk_extension_name_complete() {
    if (std::exchange(ext_name_len_, 0) == 0) return fail("400:empty chunk extension name");
    return 0;
}

bool HttpParser::scan_head(std::string_view data) {
    const char* p = data.data();
    const char* end = p + data.size();
    // Every CR must be followed by an LF: llhttp 8.1 ends a head at CR + any byte.
    if (p < end && scan_last_ == '\r' && *p != '\n') return false;
    while (p < end) {
        const auto* lf = static_cast<const char*>(std::memchr(p, '\n', end - p));
        // A CR may only be the byte before this LF (or, with no LF yet, the buffer's last).
        const char* cr_end = (lf != nullptr ? lf : end) - 1;
        if (cr_end > p && std::memchr(p, '\r', cr_end - p) != nullptr) return false;
        if (lf == nullptr) {
            scan_line_ += end - p;
            scan_last_ = end[-1];
            return true;
        }
        char before = lf > p ? lf[-1] : scan_last_;
        std::size_t line = scan_line_ + (lf - p);
        if (before != '\r' || line == 0) return false;  // a bare LF (or one right after an LF)
        scan_line_ = 0;
        scan_last_ = '\n';
        p = lf + 1;
        if (line > 1) {
            scan_started_ = true;
        } else if (scan_started_) {
            scan_head_ = false;  // the blank line ending the head: the body is not scanned
            return true;
        }
    }
    return true;
}

void HttpParser::remember_tail(std::string_view done) {
    std::size_t n = done.size();
    while (n > 0 && (done[n - 1] == ' ' || done[n - 1] == '\t'))
        --n;
    if (n > 0) {
        bool lf = done[n - 1] == '\n';
        tail_ = !lf ? Tail::kOther : n < done.size() ? Tail::kLfSpace : Tail::kLf;
    } else if (!done.empty()) {
        tail_ = tail_ == Tail::kOther ? Tail::kOther : Tail::kLfSpace;
    }
}

ParseResult HttpParser::execute(std::string_view data) {
    // llhttp answers a parser in error (or still paused) with the old error and the old error
    // position, which points into an earlier buffer: never compute `consumed` from that.
    if (failure_.kind == ParseResult::Kind::kError) return failure_;
    ParseResult r;
    if (llhttp_get_errno(&parser_) == HPE_PAUSED) {
        r.kind = ParseResult::Kind::kPaused;
        return r;
    }
    std::size_t done = 0;
    llhttp_errno_t err = HPE_OK;
    for (;;) {
        std::string_view rest = data.substr(done);
        // The scan runs ahead of llhttp; if llhttp then takes none of these bytes (paused after
        // an upgrade), the caller feeds them again: the scan must see them afresh.
        const ScanState before_scan{scan_line_, scan_last_, scan_head_, scan_started_};
        if (scan_head_ && !scan_head(rest)) {
            r.kind = ParseResult::Kind::kError;
            r.status = 400;
            r.detail = kBareCrLf;
            r.consumed = done;
            failure_ = r;
            failure_.consumed = 0;
            return r;
        }
        exec_begin_ = rest.data();
        err = llhttp_execute(&parser_, rest.data(), rest.size());
        const char* pos = err == HPE_OK ? nullptr : llhttp_get_error_pos(&parser_);
        std::size_t consumed = pos ? static_cast<std::size_t>(pos - rest.data()) : rest.size();
        if (consumed == 0 && (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE)) {
            scan_line_ = before_scan.line;
            scan_last_ = before_scan.last;
            scan_head_ = before_scan.head;
            scan_started_ = before_scan.started;
        }
        remember_tail(rest.substr(0, consumed));
        done += consumed;
        if (err != HPE_PAUSED || !auto_resume_) break;
        // A message ended where the sink did not ask to pause: go on with the next one.
        auto_resume_ = false;
        llhttp_resume(&parser_);
    }
    r.consumed = done;
    if (err == HPE_OK) return r;
    if (err == HPE_PAUSED) {
        r.kind = ParseResult::Kind::kPaused;
        return r;
    }
    if (err == HPE_PAUSED_UPGRADE) {
        // No upgrade handler is installed for this request: keep parsing the connection as
        // HTTP/1.1, as Uvicorn does for unsupported upgrades.
        llhttp_resume_after_upgrade(&parser_);
        r.kind = ParseResult::Kind::kPaused;
        return r;
    }
    r.kind = ParseResult::Kind::kError;
    r.status = 400;
    // A fail() from on_headers_complete comes back as HPE_CB_HEADERS_COMPLETE with llhttp's
    // own reason: take ours.
    const char* reason = user_error_ != nullptr ? user_error_ : llhttp_get_error_reason(&parser_);
    r.detail = reason ? reason : llhttp_errno_name(err);
    if (user_error_ != nullptr && r.detail.size() > 4 && r.detail[3] == ':') {
        r.status = (r.detail[0] - '0') * 100 + (r.detail[1] - '0') * 10 + (r.detail[2] - '0');
        r.detail.remove_prefix(4);
    }
    failure_ = r;
    failure_.consumed = 0;
    return r;
}

}  // namespace cppuvicorn::core
