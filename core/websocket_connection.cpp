// SPDX-License-Identifier: BSD-3-Clause
#include "core/websocket_connection.hpp"

#include "core/http_connection.hpp"
#include "core/metrics.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <random>
#include <utility>
#include <vector>

namespace cppuvicorn::core {

namespace {

constexpr std::string_view kFailed = "Failed to open a WebSocket connection: ";
// A server frame's header: 2 bytes, then up to 8 of length (servers do not mask).
constexpr std::size_t kMaxFrameHeader = 10;
// A corked large message reserves room for the rest of the cork, up to this much.
constexpr std::size_t kCorkReserveMax = std::size_t{1} << 20;
constexpr std::string_view kBrowserHint =
    "\nYou cannot access a WebSocket server directly with a browser. You need a WebSocket "
    "client.\n";

char lower(char c) {
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
}

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (lower(a[i]) != lower(b[i])) return false;
    }
    return true;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
        s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
        s.remove_suffix(1);
    return s;
}

// websockets keeps header values as ISO-8859-1 str and encodes its messages as UTF-8.
std::string latin1_to_utf8(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (unsigned char c : s) {
        if (c < 0x80) {
            out.push_back(static_cast<char>(c));
        } else {
            out.push_back(static_cast<char>(0xC0 | (c >> 6)));
            out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
        }
    }
    return out;
}

// ---- websockets.headers, ported: the grammar websockets checks handshake headers against
// (RFC 9110 lists of RFC 6455 §9.1 items), with its error texts and positions. A header value
// is parsed as websockets sees it (ISO-8859-1, surrounding blanks stripped); positions are byte
// offsets, which are its character offsets.

bool is_tchar(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && std::strchr("!#$%&'*+-.^_`|~", c) != nullptr);
}

bool is_token(std::string_view s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
        return is_tchar(static_cast<unsigned char>(c));
    });
}

// One parse of one header value; `error` is set on the first failure.
struct ListParser {
    std::string_view header;
    std::size_t pos = 0;
    std::string error;

    int peek() const { return pos < header.size() ? static_cast<unsigned char>(header[pos]) : -1; }
    void ows() {
        while (pos < header.size() && (header[pos] == ' ' || header[pos] == '\t'))
            ++pos;
    }
    bool fail(std::string_view what, std::size_t at) {
        if (error.empty()) error = fmt::format("{} at {} in {}", what, at, header);
        return false;
    }
    bool token(std::string_view& out) {
        std::size_t start = pos;
        while (pos < header.size() && is_tchar(static_cast<unsigned char>(header[pos])))
            ++pos;
        if (pos == start) return fail("expected token", start);
        out = header.substr(start, pos - start);
        return true;
    }
    // _quoted_string_re, then unquoting.
    bool quoted_string(std::string& out) {
        std::size_t start = pos;
        std::size_t i = pos + 1;
        out.clear();
        while (i < header.size()) {
            auto c = static_cast<unsigned char>(header[i]);
            if (c == '"') {
                pos = i + 1;
                return true;
            }
            if (c == '\\') {
                if (i + 1 >= header.size()) break;
                auto e = static_cast<unsigned char>(header[i + 1]);
                if (!(e == '\t' || (e >= 0x20 && e != 0x7F))) break;
                out.push_back(static_cast<char>(e));
                i += 2;
                continue;
            }
            if (!(c == '\t' || (c >= 0x20 && c <= 0x7E))) break;
            out.push_back(static_cast<char>(c));
            ++i;
        }
        return fail("expected quoted string", start);
    }
    // parse_upgrade_protocol: token ["/" token].
    bool protocol(std::string_view& out) {
        std::size_t start = pos;
        while (pos < header.size() && is_tchar(static_cast<unsigned char>(header[pos])))
            ++pos;
        if (pos == start) return fail("expected protocol", start);
        if (pos + 1 < header.size() && header[pos] == '/' &&
            is_tchar(static_cast<unsigned char>(header[pos + 1]))) {
            ++pos;
            while (pos < header.size() && is_tchar(static_cast<unsigned char>(header[pos])))
                ++pos;
        }
        out = header.substr(start, pos - start);
        return true;
    }
    // parse_list: 1#item, empty elements ignored. `item` returns false after fail().
    template <typename Item>
    bool list(Item item) {
        while (peek() == ',') {
            ++pos;
            ows();
        }
        while (true) {
            if (!item()) return false;
            ows();
            if (pos == header.size()) return true;
            if (peek() != ',') return fail("expected comma", pos);
            ++pos;
            ows();
            while (peek() == ',') {
                ++pos;
                ows();
            }
            if (pos == header.size()) return true;
        }
    }
};

// The items of every header called `name`, parsed with `parse_item(parser, out)`; on the first
// malformed value, `error` gets websockets' InvalidHeaderFormat text.
template <typename T, typename ParseItem>
std::vector<T> parse_header_lists(const RequestHead& head, std::string_view name,
                                  std::string_view display_name, ParseItem parse_item,
                                  std::string& error) {
    std::vector<T> out;
    for (const auto& h : head.headers) {
        if (h.name != name) continue;
        ListParser p;
        p.header = trim(h.value);
        bool ok = p.list([&] {
            T item;
            if (!parse_item(p, item)) return false;
            out.push_back(std::move(item));
            return true;
        });
        if (!ok) {
            error = fmt::format("invalid {} header: {}", display_name, latin1_to_utf8(p.error));
            return out;
        }
    }
    return out;
}

std::vector<std::string_view> parse_token_lists(const RequestHead& head, std::string_view name,
                                                std::string_view display_name, std::string& error,
                                                bool protocols = false) {
    return parse_header_lists<std::string_view>(
        head, name, display_name,
        [protocols](ListParser& p, std::string_view& item) {
            return protocols ? p.protocol(item) : p.token(item);
        },
        error);
}

// parse_extension: name *(";" param ["=" (token / quoted token)]), rebuilt without quotes and
// blanks ("name; a=b; c") for negotiate_permessage_deflate once it is known to be well formed.
std::string parse_extensions(const RequestHead& head, std::string& error) {
    auto items = parse_header_lists<std::string>(
        head, "sec-websocket-extensions", "Sec-WebSocket-Extensions",
        [](ListParser& p, std::string& item) {
            std::string_view name;
            if (!p.token(name)) return false;
            item.assign(name);
            p.ows();
            while (p.peek() == ';') {
                ++p.pos;
                p.ows();
                std::string_view param;
                if (!p.token(param)) return false;
                item.append("; ").append(param);
                p.ows();
                if (p.peek() != '=') continue;
                ++p.pos;
                p.ows();
                if (p.peek() == '"') {
                    std::size_t before = p.pos;
                    std::string value;
                    if (!p.quoted_string(value)) return false;
                    // RFC 6455 §9.1: the unquoted value must be a token too.
                    if (!is_token(value)) return p.fail("invalid quoted header content", before);
                    item.append("=").append(value);
                } else {
                    std::string_view value;
                    if (!p.token(value)) return false;
                    item.append("=").append(value);
                }
                p.ows();
            }
            return true;
        },
        error);
    std::string joined;
    for (const auto& item : items) {
        if (!joined.empty()) joined.append(", ");
        joined.append(item);
    }
    return joined;
}

std::string join(const std::vector<std::string_view>& items) {
    std::string out;
    for (std::size_t i = 0; i < items.size(); ++i) {
        if (i > 0) out.append(", ");
        out.append(items[i]);
    }
    return out;
}

const Header* last_header(const RequestHead& head, std::string_view name) {
    const Header* found = nullptr;
    for (const auto& h : head.headers) {
        if (h.name == name) found = &h;
    }
    return found;
}

// The single value of header `name`: nullptr and count 0 when missing, count > 1 when repeated.
const Header* single_header(const RequestHead& head, std::string_view name, int& count) {
    const Header* found = nullptr;
    count = 0;
    for (const auto& h : head.headers) {
        if (h.name == name) {
            if (found == nullptr) found = &h;
            ++count;
        }
    }
    return found;
}

int base64_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

// The decoded length of `s` under CPython 3.11's binascii.a2b_base64(strict_mode=True) (what
// base64.b64decode(validate=True) runs), or its error text in `error`.
std::size_t strict_base64_length(std::string_view s, std::string& error) {
    if (!s.empty() && s.front() == '=') {
        error = "Leading padding not allowed";
        return 0;
    }
    std::size_t produced = 0;
    int quad_pos = 0;
    int pads = 0;
    bool padding_started = false;
    for (std::size_t i = 0; i < s.size(); ++i) {
        auto c = static_cast<unsigned char>(s[i]);
        if (c == '=') {
            padding_started = true;
            if (quad_pos >= 2 && quad_pos + ++pads >= 4) {
                if (i + 1 < s.size()) {
                    error = "Excess data after padding";
                    return 0;
                }
                return produced;
            }
            continue;
        }
        if (base64_value(c) < 0) {
            error = "Only base64 data is allowed";
            return 0;
        }
        if (padding_started) {
            error = "Discontinuous padding not allowed";
            return 0;
        }
        pads = 0;
        if (quad_pos > 0) ++produced;
        quad_pos = (quad_pos + 1) % 4;
    }
    if (quad_pos == 1) {
        error = fmt::format(
            "Invalid base64-encoded string: number of data characters ({}) cannot be 1 more "
            "than a multiple of 4",
            produced / 3 * 4 + 1);
        return 0;
    }
    if (quad_pos != 0) error = "Incorrect padding";
    return produced;
}

// RFC 9110 §5.6.2 token characters.
bool valid_header_name(std::string_view name) {
    if (name.empty()) return false;
    for (unsigned char c : name) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
        if (!ok || c == 0) return false;
    }
    return true;
}

// Uvicorn's HEADER_VALUE_RE: no control characters except HTAB.
bool valid_header_value(std::string_view value) {
    for (unsigned char c : value) {
        if ((c < 0x20 && c != '\t') || c == 0x7F) return false;
    }
    return true;
}

HeaderError check_headers(std::span<const Header> headers) {
    for (const auto& h : headers) {
        if (!valid_header_name(h.name)) return HeaderError::kBadName;
        if (!valid_header_value(h.value)) return HeaderError::kBadValue;
    }
    return HeaderError::kNone;
}

// At most 123 bytes (a close frame's payload is at most 125, RFC 6455 §5.5), cut at a
// character boundary so the reason stays UTF-8.
std::string_view clip_reason(std::string_view reason) {
    if (reason.size() <= 123) return reason;
    std::size_t n = 123;
    while (n > 0 && (static_cast<unsigned char>(reason[n]) & 0xC0) == 0x80)
        --n;
    return reason.substr(0, n);
}

std::uint64_t seconds_to_ms(double s) {
    return s > 0 ? static_cast<std::uint64_t>(s * 1000.0) : 0;
}

std::uint32_t seed() {
    static std::random_device device;
    std::uint32_t s = device();
    return s != 0 ? s : 0x9E3779B9u;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Handshake

bool is_websocket_upgrade(const RequestHead& head) {
    // Uvicorn (httptools_impl._get_upgrade): only the last Connection and Upgrade headers count.
    if (!head.upgrade) return false;
    const Header* upgrade = last_header(head, "upgrade");
    const Header* connection = last_header(head, "connection");
    if (upgrade == nullptr || connection == nullptr || !iequals(upgrade->value, "websocket")) {
        return false;
    }
    std::string_view v = connection->value;
    while (true) {
        std::size_t comma = v.find(',');
        if (iequals(trim(v.substr(0, comma)), "upgrade")) return true;
        if (comma == std::string_view::npos) return false;
        v.remove_prefix(comma + 1);
    }
}

namespace {

// websockets' InvalidUpgrade answer: 426 with the browser hint and "Upgrade: websocket".
WsHandshake reject_upgrade(WsHandshake& r, std::string_view name,
                           const std::vector<std::string_view>& tokens) {
    std::string what =
        tokens.empty() ? fmt::format("missing {} header", name)
                       : fmt::format("invalid {} header: {}", name, latin1_to_utf8(join(tokens)));
    r.status = 426;
    r.body = fmt::format("{}{}.\n{}", kFailed, what, kBrowserHint);
    r.extra_header = "Upgrade: websocket\r\n";
    return r;
}

}  // namespace

WsHandshake check_websocket_handshake(const RequestHead& head, bool per_message_deflate) {
    // websockets' Request.parse, then ServerProtocol.process_request, in their order.
    WsHandshake r;
    auto reject = [&r](int status, std::string_view message) {
        r.status = status;
        r.body = fmt::format("{}{}.\n", kFailed, message);
        return r;
    };
    bool body = head.has_body;
    for (const auto& h : head.headers) {
        if (h.name == "transfer-encoding" || (h.name == "content-length" && h.value != "0")) {
            body = true;
        }
    }
    if (body) {
        // websockets refuses a handshake with a body and Uvicorn then never answers; answer.
        return reject(400, "did not receive a valid HTTP request");
    }
    if (head.method != "GET") {
        reject(405, fmt::format("unsupported HTTP method: {}", head.method));
        r.extra_header = "Allow: GET\r\n";
        return r;
    }
    std::string error;
    auto connection = parse_token_lists(head, "connection", "Connection", error);
    if (!error.empty()) return reject(400, error);
    bool has_upgrade = std::any_of(connection.begin(), connection.end(),
                                   [](std::string_view t) { return iequals(t, "upgrade"); });
    if (!has_upgrade) return reject_upgrade(r, "Connection", connection);
    auto upgrade = parse_token_lists(head, "upgrade", "Upgrade", error, true);
    if (!error.empty()) return reject(400, error);
    if (upgrade.size() != 1 || !iequals(upgrade[0], "websocket")) {
        return reject_upgrade(r, "Upgrade", upgrade);
    }
    int count = 0;
    const Header* key = single_header(head, "sec-websocket-key", count);
    if (count == 0) return reject(400, "missing Sec-WebSocket-Key header");
    if (count > 1) return reject(400, "invalid Sec-WebSocket-Key header: multiple values");
    std::size_t raw = strict_base64_length(key->value, error);
    if (!error.empty()) {
        return reject(400, fmt::format("invalid Sec-WebSocket-Key header: {}; {}",
                                       latin1_to_utf8(key->value), error));
    }
    if (raw != 16) {
        return reject(400, key->value.empty() ? std::string("empty Sec-WebSocket-Key header")
                                              : fmt::format("invalid Sec-WebSocket-Key header: {}",
                                                            latin1_to_utf8(key->value)));
    }
    const Header* version = single_header(head, "sec-websocket-version", count);
    if (count == 0) return reject(400, "missing Sec-WebSocket-Version header");
    if (count > 1) return reject(400, "invalid Sec-WebSocket-Version header: multiple values");
    if (version->value != "13") {
        return reject(400, version->value.empty()
                               ? std::string("empty Sec-WebSocket-Version header")
                               : fmt::format("invalid Sec-WebSocket-Version header: {}",
                                             latin1_to_utf8(version->value)));
    }
    single_header(head, "origin", count);
    if (count > 1) return reject(400, "invalid Origin header: multiple values");
    // process_extensions (only with an extension configured), then process_subprotocol.
    std::string offers;
    if (per_message_deflate) {
        offers = parse_extensions(head, error);
        if (!error.empty()) return reject(400, error);
    }
    parse_token_lists(head, "sec-websocket-protocol", "Sec-WebSocket-Protocol", error);
    if (!error.empty()) return reject(400, error);
    r.accept_key = websocket_accept_key(key->value);
    if (!offers.empty()) r.deflate = negotiate_permessage_deflate(offers);
    return r;
}

// ---------------------------------------------------------------------------------------------
// Session

WebSocketConnection::WebSocketConnection(Transport& transport, ConnectionContext& ctx)
    : transport_(transport),
      ctx_(ctx),
      decoder_(ctx.config.ws_max_size, false),
      rng_state_(seed()) {}

WebSocketConnection::~WebSocketConnection() = default;

void WebSocketConnection::start(const RequestHead& head, WebSocketHandler& handler) {
    handler_ = &handler;
    WsHandshake hs = check_websocket_handshake(head, ctx_.config.ws_per_message_deflate);
    if (hs.status != 101) {
        write_http_response(hs.status, {}, hs.body, hs.extra_header);
        state_ = State::kRejected;
        transport_.close(false);
        return;
    }
    // The answer's handshake lines, kept only until the 101 goes out.
    handshake_lines_ = std::make_unique<std::string>("Sec-WebSocket-Accept: ");
    handshake_lines_->append(hs.accept_key).append("\r\n");
    if (hs.deflate) {
        deflate_ = std::make_unique<WsDeflate>(*hs.deflate);
        if (!hs.deflate->response.empty()) {
            handshake_lines_->append("Sec-WebSocket-Extensions: ")
                .append(hs.deflate->response)
                .append("\r\n");
        }
        decoder_.set_allow_rsv1(true);
    }
    state_ = State::kHandshake;
    connected_ = true;
    // May run the application up to its first suspension, including accept() or respond().
    handler_->on_ws_connect();
}

WriteResult WebSocketConnection::accept(std::span<const Header> headers,
                                        std::string_view subprotocol) {
    if (state_ != State::kHandshake) return WriteResult::kClosed;
    header_error_ = check_headers(headers);
    if (header_error_ == HeaderError::kNone && !valid_header_value(subprotocol)) {
        header_error_ = HeaderError::kBadValue;
    }
    if (header_error_ != HeaderError::kNone) return WriteResult::kInvalid;
    // The head websockets builds (Upgrade, Connection, Sec-WebSocket-Accept, extensions) with
    // its Date removed, then Uvicorn's default headers, the app's, and the subprotocol.
    std::string& out = transport_.out();
    out.append("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n");
    if (handshake_lines_ != nullptr) out.append(*handshake_lines_);
    if (ctx_.config.date_header) out.append(ctx_.date.header_line());
    out.append(ctx_.config.default_headers);
    for (const auto& h : headers) {
        for (char c : h.name)
            out.push_back(lower(c));
        out.append(": ").append(h.value).append("\r\n");
    }
    if (!subprotocol.empty()) {
        out.append("Sec-WebSocket-Protocol: ").append(subprotocol).append("\r\n");
    }
    out.append("\r\n");
    handshake_lines_.reset();  // only needed for the 101
    state_ = State::kOpen;
    if (MetricsSlot* m = ctx_.config.metrics) {
        m->add(kWebSocketsOpened);
        metered_ = true;
    }
    std::uint64_t interval = seconds_to_ms(ctx_.config.ws_ping_interval);
    if (interval > 0) ping_due_ms_ = transport_.now_ms() + interval;
    update_reading();
    if (decoder_.buffered() > 0) transport_.schedule_resume();  // frames sent ahead of the 101
    after_write();
    return write_state();
}

WriteResult WebSocketConnection::respond(int status, std::span<const Header> headers,
                                         std::string_view body) {
    if (state_ != State::kHandshake) return WriteResult::kClosed;
    if (status < 200 || status > 599) {  // a 1xx is not an answer (101: not a denial)
        header_error_ = HeaderError::kBadStatus;
        return WriteResult::kInvalid;
    }
    header_error_ = check_headers(headers);
    if (header_error_ != HeaderError::kNone) return WriteResult::kInvalid;
    // The application's content-length must describe the body it gave (Uvicorn sends it
    // whatever it says, and the client reads a different response).
    for (const auto& h : headers) {
        std::uint64_t length = 0;
        if (!iequals(h.name, "content-length")) continue;
        if (!parse_content_length(h.value, length)) {
            header_error_ = HeaderError::kBadValue;
            return WriteResult::kInvalid;
        }
        if (length != body.size()) {
            return length < body.size() ? WriteResult::kTooLong : WriteResult::kTooShort;
        }
    }
    write_http_response(status, headers, body, {});
    state_ = State::kRejected;
    transport_.close(false);
    return WriteResult::kOk;
}

void WebSocketConnection::write_http_response(int status, std::span<const Header> headers,
                                              std::string_view body,
                                              std::string_view extra_header) {
    // websockets' reject() and Uvicorn's denial response: the given headers first, then
    // setdefault() of Date, Connection, Content-Length and Content-Type. No server header.
    std::string& out = transport_.out();
    out.append(ctx_.status_lines.line(status));
    bool date = false;
    bool connection = false;
    bool length = false;
    bool type = false;
    for (const auto& h : headers) {
        date = date || iequals(h.name, "date");
        connection = connection || iequals(h.name, "connection");
        length = length || iequals(h.name, "content-length");
        type = type || iequals(h.name, "content-type");
        out.append(h.name).append(": ").append(h.value).append("\r\n");
    }
    if (!date) {
        // "date: Sun, 06 Nov 1994 08:49:37 GMT\r\n" → the value.
        std::string_view line = ctx_.date.header_line();
        out.append("Date: ").append(line.substr(6));
    }
    if (!connection) out.append("Connection: close\r\n");
    if (!length) fmt::format_to(std::back_inserter(out), "Content-Length: {}\r\n", body.size());
    if (!type) out.append("Content-Type: text/plain; charset=utf-8\r\n");
    out.append(extra_header).append("\r\n").append(body);
    if (handler_ != nullptr) handler_->on_ws_rejected(status);
    after_write();
}

// ---------------------------------------------------------------------------------------------
// Input

void WebSocketConnection::on_data(std::string_view data) {
    if (state_ != State::kHandshake && state_ != State::kOpen && state_ != State::kClosing) {
        return;  // rejected or closed: what follows is discarded (RFC 6455 §7.1.7)
    }
    // `data` dies when this returns: whatever the frames below leave is copied by retain().
    decoder_.feed_borrowed(data);
    if (state_ == State::kHandshake) {
        // Frames sent ahead of the 101 wait for it (websockets would even answer a ping before
        // the 101); reading stops so they cannot pile up.
        decoder_.retain();
        update_reading();
        return;
    }
    process_frames();
    decoder_.retain();
}

void WebSocketConnection::process_pending() {
    if (state_ == State::kOpen || state_ == State::kClosing) process_frames();
}

std::uint64_t WebSocketConnection::message_limit_left() const {
    std::uint64_t max = ctx_.config.ws_max_size;
    if (!in_message_) return max;
    return max - std::min<std::uint64_t>(max, message_.size());
}

void WebSocketConnection::process_frames() {
    if (in_frames_) return;
    in_frames_ = true;
    WsFrame frame;
    while ((state_ == State::kOpen || state_ == State::kClosing) && !paused_) {
        // websockets' Protocol.parse: a frame may use what is left of the message limit.
        decoder_.set_max_frame_size(message_limit_left());
        WsDecoder::Status st = decoder_.next(frame, /*defer_binary_unmask=*/true);
        if (st == WsDecoder::Status::kNeedMore) break;
        if (st == WsDecoder::Status::kError) {
            if (decoder_.error_code() == ws_close::kTooBig) {
                fail_too_big(decoder_.too_big_length(), false);
            } else {
                fail(decoder_.error_code(), decoder_.error_reason(), WsCloseCause::kProtocol);
            }
            break;
        }
        handle_frame(frame);
    }
    in_frames_ = false;
    // Every frame read was handled: the input buffer goes until the next read needs one, so an
    // idle session holds none (one malloc per read is noise next to delivering a message).
    decoder_.trim(0);
    update_reading();
}

void WebSocketConnection::handle_frame(const WsFrame& frame) {
    switch (frame.opcode) {
        case WsOpcode::kText:
        case WsOpcode::kBinary:
        case WsOpcode::kContinuation:
            handle_data_frame(frame);
            break;
        case WsOpcode::kPing:
            // RFC 6455 §5.5.2; websockets answers while closing too.
            ws_encode_frame(transport_.out(), WsOpcode::kPong, frame.payload);
            after_write();
            break;
        case WsOpcode::kPong:
            handle_pong(frame.payload);
            break;
        case WsOpcode::kClose:
            handle_close_frame(frame.payload);
            break;
    }
}

void WebSocketConnection::handle_data_frame(const WsFrame& frame) {
    if (frame.opcode != WsOpcode::kContinuation) {
        if (in_message_) {
            fail(ws_close::kProtocolError, "expected a continuation frame",
                 WsCloseCause::kProtocol);
            return;
        }
        bool text = frame.opcode == WsOpcode::kText;
        // The decoder lets RSV1 through on data frames only with permessage-deflate.
        bool compressed = frame.rsv1;
        if (frame.masked) {
            // NOTE(perf): the common binary case: the handler unmasks it from the read buffer
            // into its own storage. Dropped after the application's close, as in deliver().
            if (state_ == State::kOpen && handler_ != nullptr) handler_->on_ws_binary(frame);
            return;
        }
        if (!compressed && frame.fin) {
            deliver(text, frame.payload);  // NOTE(perf): the common case, straight from the buffer
            return;
        }
        message_.clear();
        message_text_ = text;
        message_compressed_ = compressed;
    } else {
        if (frame.rsv1) {
            fail(ws_close::kProtocolError,
                 in_message_ && message_compressed_ ? "RSV1 bit set in continuation frame"
                                                    : "reserved bits must be 0",
                 WsCloseCause::kProtocol);
            return;
        }
        if (!in_message_) {
            fail(ws_close::kProtocolError, "unexpected continuation frame",
                 WsCloseCause::kProtocol);
            return;
        }
    }
    std::optional<std::uint64_t> current;
    if (in_message_) current = message_.size();
    if (message_compressed_) {
        auto r =
            deflate_->decompress_frame(frame.payload, frame.fin, message_limit_left(), message_);
        if (r == WsDeflate::Inflate::kTooBig) {
            // websockets: PayloadTooBig(None, max_size) raised while decoding.
            std::string reason = "frame ";
            if (current) reason += fmt::format("after reading {} bytes ", *current);
            reason += fmt::format("exceeds limit of {} bytes", ctx_.config.ws_max_size);
            fail(ws_close::kTooBig, reason, WsCloseCause::kProtocol);
            return;
        }
        if (r == WsDeflate::Inflate::kError) {
            fail(ws_close::kProtocolError, "decompression failed", WsCloseCause::kProtocol);
            return;
        }
    } else {
        message_.append(frame.payload);
    }
    if (!frame.fin) {
        in_message_ = true;
        return;
    }
    in_message_ = false;
    deliver(message_text_, message_);
    message_.clear();
}

void WebSocketConnection::deliver(bool text, std::string_view data) {
    // After the application's close, messages are dropped (Uvicorn) but frames are still read
    // so the client's close frame arrives.
    if (state_ != State::kOpen) return;
    if (text && !valid_utf8(data)) {
        fail(ws_close::kInvalidData, "", WsCloseCause::kInvalidText);
        return;
    }
    if (handler_ != nullptr) handler_->on_ws_message(text, data);
}

void WebSocketConnection::handle_close_frame(std::string_view payload) {
    // websockets' Close.parse (the reason is decoded before the code is checked), then
    // Protocol.recv_frame.
    int code = 1005;
    std::string_view reason;
    if (payload.size() == 1) {
        fail(ws_close::kProtocolError, "close frame too short", WsCloseCause::kProtocol);
        return;
    }
    if (payload.size() >= 2) {
        code =
            (static_cast<unsigned char>(payload[0]) << 8) | static_cast<unsigned char>(payload[1]);
        reason = payload.substr(2);
        if (auto bad = utf8_error(reason)) {
            fail(ws_close::kInvalidData,
                 fmt::format("{} at position {}", bad->reason, bad->position),
                 WsCloseCause::kProtocol);
            return;
        }
        if (!valid_close_code(code)) {
            fail(ws_close::kProtocolError, "invalid status code", WsCloseCause::kProtocol);
            return;
        }
    }
    if (in_message_) {
        fail(ws_close::kProtocolError, "incomplete fragmented message", WsCloseCause::kProtocol);
        return;
    }
    if (state_ == State::kOpen) {
        // RFC 6455 §5.5.1: answer with a close frame; websockets echoes the payload as is.
        ws_encode_frame(transport_.out(), WsOpcode::kClose, payload);
    }
    state_ = State::kClosed;
    stop_keepalive();
    close_due_ms_ = 0;
    report_closed(code, reason, WsCloseCause::kPeer);
    // §7.1.1: the server closes the TCP connection first, once the echo is written.
    transport_.close(false);
}

void WebSocketConnection::handle_pong(std::string_view payload) {
    // Unsolicited pongs and stale ones (another payload) are ignored (RFC 6455 §5.5.3).
    if (!ping_pending_ || payload.size() != 4) return;
    unsigned char expected[4] = {static_cast<unsigned char>(ping_payload_ >> 24),
                                 static_cast<unsigned char>(ping_payload_ >> 16),
                                 static_cast<unsigned char>(ping_payload_ >> 8),
                                 static_cast<unsigned char>(ping_payload_)};
    if (std::memcmp(payload.data(), expected, 4) != 0) return;
    std::uint64_t now = transport_.now_ms();
    last_rtt_ms_ = static_cast<std::uint32_t>(
        std::min<std::uint64_t>(now - ping_sent_ms_, std::numeric_limits<std::uint32_t>::max()));
    ping_pending_ = false;
    if (pong_due_ms_ != 0) {
        // Uvicorn: the next ping goes out one interval after the previous one was sent.
        pong_due_ms_ = 0;
        std::uint64_t interval = seconds_to_ms(ctx_.config.ws_ping_interval);
        ping_due_ms_ = now + (interval > last_rtt_ms_ ? interval - last_rtt_ms_ : 0);
    }
}

void WebSocketConnection::fail(int code, std::string_view reason, WsCloseCause cause) {
    // RFC 6455 §7.1.7 "Fail the WebSocket Connection": a close frame if none was sent yet,
    // then close the TCP connection without waiting for the answer (websockets' fail()).
    bool active = state_ == State::kOpen || state_ == State::kClosing;
    if (state_ == State::kOpen) ws_encode_close(transport_.out(), code, clip_reason(reason));
    state_ = State::kClosed;
    in_message_ = false;
    stop_keepalive();
    close_due_ms_ = 0;
    if (active) report_closed(code, reason, cause);
    transport_.close(false);
}

void WebSocketConnection::fail_too_big(std::uint64_t frame_length, bool decompressed) {
    // websockets' PayloadTooBig text; the limit shown is the whole message limit.
    std::string reason = "frame ";
    if (!decompressed) reason += fmt::format("with {} bytes ", frame_length);
    if (in_message_) reason += fmt::format("after reading {} bytes ", message_.size());
    reason += fmt::format("exceeds limit of {} bytes", ctx_.config.ws_max_size);
    fail(ws_close::kTooBig, reason, WsCloseCause::kProtocol);
}

void WebSocketConnection::report_closed(int code, std::string_view reason, WsCloseCause cause) {
    if (!connected_ || closed_reported_ || handler_ == nullptr) return;
    closed_reported_ = true;
    handler_->on_ws_closed(code, reason, cause);
}

// ---------------------------------------------------------------------------------------------
// Output and flow control

WriteResult WebSocketConnection::send(bool text, std::string_view data) {
    if (state_ != State::kOpen) return WriteResult::kClosed;
    WsOpcode op = text ? WsOpcode::kText : WsOpcode::kBinary;
    std::string& out = transport_.out();
    if (deflate_ != nullptr) {
        std::string& scratch = deflate_->scratch();
        scratch.clear();
        if (!deflate_->compress(data, scratch)) {
            fail(ws_close::kInternalError, "", WsCloseCause::kProtocol);
            return WriteResult::kClosed;
        }
        data = scratch;
    }
    // NOTE(perf): a large payload goes out with its (corked) header in one writev; only what
    // the socket does not take is copied. One sent behind another in the same loop turn (a
    // client with several in flight) joins the cork instead while the cork stays under
    // write_high_water: a few large writes, not a small one per message (which on loopback
    // also meet the peer's delayed ACK: 40 ms stalls with 8 x 16 KiB in flight).
    const bool large = data.size() >= kDirectWriteMin;
    const bool cork = large && transport_.flush_scheduled() &&
                      out.size() + data.size() < ctx_.config.write_high_water;
    if (large && !cork) {
        ws_encode_header(out, op, data.size(), true, deflate_ != nullptr);
        transport_.write_direct(data);
    } else {
        if (cork) {
            // Room for the whole cork at once (growing by doubling took two reallocations and
            // copies), from the server's spare buffers when it has one.
            transport_.reserve_out(
                std::min<std::size_t>(ctx_.config.write_high_water, kCorkReserveMax) +
                kMaxFrameHeader);
        }
        ws_encode_frame(out, op, data, true, deflate_ != nullptr);
    }
    after_write();
    return write_state();
}

WriteResult WebSocketConnection::close(int code, std::string_view reason) {
    if (state_ != State::kOpen) return WriteResult::kClosed;
    ws_encode_close(transport_.out(), code, clip_reason(reason));
    state_ = State::kClosing;
    stop_keepalive();
    close_due_ms_ = transport_.now_ms() + kCloseTimeoutMs;
    // The client's close frame must get through even if the application stopped reading.
    paused_ = false;
    update_reading();
    if (decoder_.buffered() > 0) transport_.schedule_resume();
    after_write();
    return write_state();
}

void WebSocketConnection::abort() {
    if (state_ == State::kClosed) return;
    state_ = State::kClosed;
    stop_keepalive();
    close_due_ms_ = 0;
    transport_.close(true);
}

void WebSocketConnection::pause_reading() {
    if (paused_) return;
    paused_ = true;
    update_reading();
}

void WebSocketConnection::resume_reading() {
    if (!paused_) return;
    paused_ = false;
    update_reading();
    if (decoder_.buffered() > 0 && (state_ == State::kOpen || state_ == State::kClosing)) {
        transport_.schedule_resume();
    }
}

void WebSocketConnection::update_reading() {
    bool want;
    switch (state_) {
        case State::kHandshake:
            want = decoder_.buffered() == 0;  // still notice the client leaving
            break;
        case State::kOpen:
        case State::kClosing:
            want = !paused_;
            break;
        default:
            return;  // the connection is closing
    }
    if (want) {
        transport_.resume_reading();
    } else {
        transport_.pause_reading();
    }
}

void WebSocketConnection::after_write() {
    if (transport_.out().size() >= ctx_.config.write_high_water) {
        transport_.flush();
    } else {
        transport_.schedule_flush();
    }
}

WriteResult WebSocketConnection::write_state() {
    if (transport_.buffered() >= ctx_.config.write_high_water) {
        waiting_writable_ = true;
        return WriteResult::kWait;
    }
    return WriteResult::kOk;
}

void WebSocketConnection::trim_buffers() {
    // Not while frames are being handled: their payloads are views into the decoder's buffer.
    if (in_frames_) return;
    // Whatever is empty goes, whatever its size: an idle session then holds no buffer at all,
    // and a busy one pays a malloc per message (or per loop turn for the output), which does
    // not show next to the Python side of a message.
    decoder_.trim(0);
    transport_.release_out();
    if (!in_message_) std::string().swap(message_);
    if (deflate_ != nullptr) std::string().swap(deflate_->scratch());
}

void WebSocketConnection::on_drained() {
    trim_buffers();
    if (waiting_writable_ && handler_ != nullptr) {
        waiting_writable_ = false;
        handler_->on_ws_writable();
    }
}

// ---------------------------------------------------------------------------------------------
// Timers, shutdown, end of life

void WebSocketConnection::send_ping() {
    // xorshift32: the payload only has to tell this ping's pong from stale ones.
    rng_state_ ^= rng_state_ << 13;
    rng_state_ ^= rng_state_ >> 17;
    rng_state_ ^= rng_state_ << 5;
    ping_payload_ = rng_state_;
    char payload[4] = {static_cast<char>(ping_payload_ >> 24),
                       static_cast<char>(ping_payload_ >> 16),
                       static_cast<char>(ping_payload_ >> 8), static_cast<char>(ping_payload_)};
    ws_encode_frame(transport_.out(), WsOpcode::kPing, std::string_view(payload, 4));
    after_write();
    std::uint64_t now = transport_.now_ms();
    ping_pending_ = true;
    ping_sent_ms_ = now;
    std::uint64_t timeout = seconds_to_ms(ctx_.config.ws_ping_timeout);
    if (timeout > 0) {
        pong_due_ms_ = now + timeout;
    } else {
        std::uint64_t interval = seconds_to_ms(ctx_.config.ws_ping_interval);
        ping_due_ms_ =
            now + std::max<std::uint64_t>(1, interval > last_rtt_ms_ ? interval - last_rtt_ms_ : 0);
    }
}

void WebSocketConnection::stop_keepalive() {
    ping_due_ms_ = 0;
    pong_due_ms_ = 0;
    ping_pending_ = false;
}

std::uint64_t WebSocketConnection::deadline_ms() const {
    if (state_ != State::kOpen && state_ != State::kClosing) return 0;
    std::uint64_t d = 0;
    for (std::uint64_t t : {ping_due_ms_, pong_due_ms_, close_due_ms_}) {
        if (t != 0 && (d == 0 || t < d)) d = t;
    }
    return d;
}

void WebSocketConnection::on_deadline() {
    std::uint64_t now = transport_.now_ms();
    if (close_due_ms_ != 0 && now >= close_due_ms_) {
        // The client never answered our close frame.
        close_due_ms_ = 0;
        if (state_ == State::kClosing) {
            state_ = State::kClosed;
            transport_.close(false);
        }
        return;
    }
    if (pong_due_ms_ != 0 && now >= pong_due_ms_) {
        pong_due_ms_ = 0;
        ping_pending_ = false;
        if (state_ == State::kOpen) {
            fail(ws_close::kInternalError, "keepalive ping timeout", WsCloseCause::kKeepalive);
        }
        return;
    }
    if (ping_due_ms_ != 0 && now >= ping_due_ms_) {
        ping_due_ms_ = 0;
        if (state_ == State::kOpen) send_ping();
    }
}

void WebSocketConnection::shutdown() {
    switch (state_) {
        case State::kHandshake:
            // Uvicorn: a session the application has not accepted yet gets a 500.
            write_http_response(500, {}, "Internal Server Error", {});
            state_ = State::kRejected;
            transport_.close(false);
            break;
        case State::kOpen:
            // RFC 6455 §7.4.1: 1012 "service restart"; Uvicorn closes without waiting.
            report_closed(ws_close::kServiceRestart, "", WsCloseCause::kShutdown);
            if (state_ != State::kOpen) break;  // the handler closed it meanwhile
            ws_encode_close(transport_.out(), ws_close::kServiceRestart, "");
            state_ = State::kClosed;
            stop_keepalive();
            transport_.close(false);
            break;
        case State::kClosing:
            state_ = State::kClosed;
            close_due_ms_ = 0;
            transport_.close(false);
            break;
        default:
            break;
    }
}

void WebSocketConnection::on_closed() {
    if (metered_) ctx_.config.metrics->add(kWebSocketsClosed);
    metered_ = false;
    state_ = State::kClosed;
    stop_keepalive();
    close_due_ms_ = 0;
    report_closed(ws_close::kAbnormal, "", WsCloseCause::kLost);
    if (WebSocketHandler* h = std::exchange(handler_, nullptr)) h->on_ws_release();
}

}  // namespace cppuvicorn::core
