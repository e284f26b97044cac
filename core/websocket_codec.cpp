// SPDX-License-Identifier: BSD-3-Clause
#include "core/websocket_codec.hpp"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <zlib.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <utility>
#include <vector>

namespace cppuvicorn::core {

std::string websocket_accept_key(std::string_view client_key) {
    static constexpr std::string_view kGuid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    std::string input(client_key);
    input.append(kGuid);
    unsigned char digest[SHA_DIGEST_LENGTH];
    SHA1(reinterpret_cast<const unsigned char*>(input.data()), input.size(), digest);
    unsigned char out[4 * ((SHA_DIGEST_LENGTH + 2) / 3) + 1];
    int n = EVP_EncodeBlock(out, digest, SHA_DIGEST_LENGTH);
    return std::string(reinterpret_cast<char*>(out), static_cast<std::size_t>(n));
}

bool valid_close_code(int code) {
    // RFC 6455 §7.4.1/§7.4.2: 1004-1006 and 1015 are reserved, 1016-2999 are unassigned.
    if (code >= 3000 && code <= 4999) return true;
    if (code < 1000 || code > 1014) return false;
    return code != 1004 && code != 1005 && code != 1006;
}

bool valid_utf8(std::string_view s) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const unsigned char* end = p + s.size();
    while (p < end) {
        // NOTE(perf): ASCII fast path, 8 bytes at a time.
        while (end - p >= 8) {
            std::uint64_t w;
            std::memcpy(&w, p, 8);
            if (w & 0x8080808080808080ULL) break;
            p += 8;
        }
        if (p >= end) break;
        unsigned char c = *p;
        if (c < 0x80) {
            ++p;
            continue;
        }
        int n;
        std::uint32_t cp;
        if ((c & 0xE0) == 0xC0) {
            n = 1;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            n = 2;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (end - p <= n) return false;
        for (int i = 1; i <= n; ++i) {
            if ((p[i] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (p[i] & 0x3F);
        }
        // Overlong forms, surrogates and values above U+10FFFF are invalid.
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
            return false;
        }
        p += n + 1;
    }
    return true;
}

std::optional<Utf8Error> utf8_error(std::string_view s) {
    // CPython's UTF-8 decoder (Objects/stringlib/codecs.h): a byte that cannot start a
    // sequence is "invalid start byte"; a sequence cut by the end of the input is "unexpected
    // end of data" as long as every byte present is a valid continuation (with the narrower
    // second-byte ranges after E0, ED, F0 and F4); anything else is "invalid continuation byte".
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    std::size_t n = s.size();
    std::size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (c < 0x80) {
            ++i;
            continue;
        }
        int need;
        unsigned char lo = 0x80;
        unsigned char hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            return Utf8Error{"invalid start byte", i};
        }
        for (int k = 1; k <= need; ++k) {
            if (i + k >= n) return Utf8Error{"unexpected end of data", i};
            unsigned char b = p[i + k];
            unsigned char min = k == 1 ? lo : 0x80;
            unsigned char max = k == 1 ? hi : 0xBF;
            if (b < min || b > max) return Utf8Error{"invalid continuation byte", i};
        }
        i += static_cast<std::size_t>(need) + 1;
    }
    return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// permessage-deflate negotiation (RFC 7692 §7.1)

namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
        s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
        s.remove_suffix(1);
    return s;
}

std::vector<std::string_view> split(std::string_view s, char sep) {
    std::vector<std::string_view> parts;
    std::size_t start = 0;
    while (true) {
        std::size_t at = s.find(sep, start);
        parts.push_back(trim(s.substr(start, at == std::string_view::npos ? s.npos : at - start)));
        if (at == std::string_view::npos) break;
        start = at + 1;
    }
    return parts;
}

// One offer's parameters; -1 = absent, 0 = present without value.
struct Offer {
    bool server_no_context_takeover = false;
    bool client_no_context_takeover = false;
    int server_max_window_bits = -1;
    int client_max_window_bits = -1;
};

bool parse_bits(std::string_view v, int& out) {
    if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
    if (v.empty() || (v.size() > 1 && v.front() == '0')) return false;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    return ec == std::errc() && p == v.data() + v.size() && out >= 8 && out <= 15;
}

bool parse_offer(const std::vector<std::string_view>& parts, Offer& o) {
    for (std::size_t i = 1; i < parts.size(); ++i) {
        std::string_view p = parts[i];
        std::size_t eq = p.find('=');
        std::string_view name = trim(p.substr(0, eq));
        std::string_view value = eq == std::string_view::npos ? "" : trim(p.substr(eq + 1));
        bool has_value = eq != std::string_view::npos;
        if (name == "server_no_context_takeover" && !has_value && !o.server_no_context_takeover) {
            o.server_no_context_takeover = true;
        } else if (name == "client_no_context_takeover" && !has_value &&
                   !o.client_no_context_takeover) {
            o.client_no_context_takeover = true;
        } else if (name == "server_max_window_bits" && has_value && o.server_max_window_bits < 0) {
            if (!parse_bits(value, o.server_max_window_bits)) return false;
        } else if (name == "client_max_window_bits" && o.client_max_window_bits < 0) {
            if (!has_value) {
                o.client_max_window_bits = 0;
            } else if (!parse_bits(value, o.client_max_window_bits)) {
                return false;
            }
        } else {
            return false;  // unknown or duplicate parameter: decline this offer
        }
    }
    return true;
}

}  // namespace

std::optional<DeflateParams> negotiate_permessage_deflate(std::string_view offers, int server_bits,
                                                          int client_bits) {
    for (std::string_view ext : split(offers, ',')) {
        auto parts = split(ext, ';');
        if (parts.empty() || parts[0] != "permessage-deflate") continue;
        Offer o;
        if (!parse_offer(parts, o)) continue;
        DeflateParams d;
        d.server_no_context_takeover = o.server_no_context_takeover;
        d.client_no_context_takeover = o.client_no_context_takeover;
        int smwb = o.server_max_window_bits < 0 ? server_bits
                                                : std::min(o.server_max_window_bits, server_bits);
        if (smwb == 8) continue;  // zlib cannot produce 8-bit windows
        int cmwb = -1;
        if (o.client_max_window_bits == 0) {
            cmwb = client_bits;
        } else if (o.client_max_window_bits > 0) {
            cmwb = std::min(o.client_max_window_bits, client_bits);
        }
        d.server_max_window_bits = smwb;
        d.client_max_window_bits = cmwb > 0 ? cmwb : 15;
        d.response = "permessage-deflate";
        if (d.server_no_context_takeover) d.response += "; server_no_context_takeover";
        if (d.client_no_context_takeover) d.response += "; client_no_context_takeover";
        d.response += "; server_max_window_bits=" + std::to_string(smwb);
        if (cmwb > 0) d.response += "; client_max_window_bits=" + std::to_string(cmwb);
        return d;
    }
    return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// Frames

namespace {

// NOTE(perf): unmasks 32 bytes at a time (GCC/Clang vector types: SSE2 on any x86-64), then
// 8, then bytes. `dst` may be `src`.
void unmask_copy(unsigned char* dst, const unsigned char* src, std::uint64_t len,
                 const unsigned char mask[4]) {
    std::uint64_t mask8;
    std::memcpy(&mask8, mask, 4);
    std::memcpy(reinterpret_cast<unsigned char*>(&mask8) + 4, mask, 4);
    std::uint64_t i = 0;
    using V = std::uint64_t __attribute__((vector_size(16)));
    const V mask16 = {mask8, mask8};
    for (; i + 32 <= len; i += 32) {
        V a;
        V b;
        std::memcpy(&a, src + i, 16);
        std::memcpy(&b, src + i + 16, 16);
        a ^= mask16;
        b ^= mask16;
        std::memcpy(dst + i, &a, 16);
        std::memcpy(dst + i + 16, &b, 16);
    }
    for (; i + 8 <= len; i += 8) {
        std::uint64_t w;
        std::memcpy(&w, src + i, 8);
        w ^= mask8;
        std::memcpy(dst + i, &w, 8);
    }
    for (; i < len; ++i)
        dst[i] = src[i] ^ mask[i & 3];
}

}  // namespace

void ws_unmask_copy(char* dst, const char* src, std::size_t len, const unsigned char mask[4]) {
    unmask_copy(reinterpret_cast<unsigned char*>(dst), reinterpret_cast<const unsigned char*>(src),
                len, mask);
}

void WsDecoder::feed(std::string_view data) {
    retain();
    if (consumed_ > 0) {
        // Frames already returned are dead: compact so the buffer holds only what is pending.
        buf_.erase(0, consumed_);
        consumed_ = 0;
    }
    buf_.append(data);
}

void WsDecoder::feed_borrowed(std::string_view data) {
    if (data.empty()) {
        feed(data);
        return;
    }
    if (buffered() > 0) {
        retain();
        tail_ = data;  // next() tops up the pending frame from it, then decodes the rest here
        return;
    }
    buf_.clear();
    consumed_ = 0;
    borrowed_ = data;
}

void WsDecoder::retain() {
    std::string_view rest = borrowed_.data() != nullptr ? borrowed_ : tail_;
    if (rest.data() == nullptr) return;
    borrowed_ = {};
    tail_ = {};
    if (consumed_ > 0) {
        buf_.erase(0, consumed_);
        consumed_ = 0;
    }
    buf_.append(rest);
}

void WsDecoder::top_up() {
    constexpr std::size_t kMaxHeader = 14;  // 2 + 8 (64-bit length) + 4 (mask)
    while (!tail_.empty()) {
        std::size_t have = buf_.size() - consumed_;
        auto* p = reinterpret_cast<const unsigned char*>(buf_.data() + consumed_);
        std::size_t header = 0;
        std::uint64_t len = 0;
        std::uint64_t total = 0;  // header, mask and payload, once the header says
        if (read_length(p, have, header, len) && have >= header + 4) {
            total = header + 4 + std::min(len, std::uint64_t{1} << 62);
        }
        if (total != 0 && total <= have) return;  // complete: parse_header judges it
        // The header's worth first while it is incomplete, then the rest of the frame.
        std::uint64_t want = total == 0 ? kMaxHeader - std::min(have, kMaxHeader) : total - have;
        auto take = static_cast<std::size_t>(std::min<std::uint64_t>(want, tail_.size()));
        buf_.append(tail_.substr(0, take));
        tail_.remove_prefix(take);
    }
}

bool WsDecoder::read_length(const unsigned char* p, std::size_t avail, std::size_t& header,
                            std::uint64_t& len) {
    if (avail < 2) return false;
    len = p[1] & 0x7F;
    header = 2;
    if (len == 126) {
        if (avail < 4) return false;
        len = (std::uint64_t{p[2]} << 8) | p[3];
        header = 4;
    } else if (len == 127) {
        if (avail < 10) return false;
        len = 0;
        for (int i = 2; i < 10; ++i)
            len = (len << 8) | p[i];
        header = 10;
    }
    return true;
}

WsDecoder::Status WsDecoder::parse_header(const unsigned char* p, std::size_t avail,
                                          std::size_t& header, std::uint64_t& len, WsFrame& out) {
    if (avail < 2) return Status::kNeedMore;
    bool fin = (p[0] & 0x80) != 0;
    bool rsv1 = (p[0] & 0x40) != 0;
    int opcode = p[0] & 0x0F;
    bool control = (opcode & 0x08) != 0;
    // RFC 6455 §5.2; order and wording of websockets' Frame.parse and Frame.check.
    if (opcode > 2 && (opcode < 8 || opcode > 10)) {
        return fail(ws_close::kProtocolError, "invalid opcode");
    }
    if ((p[1] & 0x80) == 0) return fail(ws_close::kProtocolError, "incorrect masking");
    if (!read_length(p, avail, header, len)) return Status::kNeedMore;
    if (len > max_frame_size_) {
        too_big_length_ = len;
        return fail(ws_close::kTooBig, "frame exceeds limit");
    }
    if ((p[0] & 0x30) != 0 || (rsv1 && (!allow_rsv1_ || control))) {
        return fail(ws_close::kProtocolError, "reserved bits must be 0");
    }
    if (control && len > 125) return fail(ws_close::kProtocolError, "control frame too long");
    if (control && !fin) return fail(ws_close::kProtocolError, "fragmented control frame");
    if (avail - header - 4 < len || avail < header + 4) return Status::kNeedMore;
    out.fin = fin;
    out.rsv1 = rsv1;
    out.opcode = static_cast<WsOpcode>(opcode);
    return Status::kFrame;
}

WsDecoder::Status WsDecoder::next(WsFrame& out, bool defer_binary_unmask) {
    std::size_t header = 0;
    std::uint64_t len = 0;
    out.masked = false;
    if (!tail_.empty() && consumed_ == buf_.size()) {
        // The frame the earlier read left is done: the rest of this read is decoded in place.
        buf_.clear();
        consumed_ = 0;
        borrowed_ = std::exchange(tail_, {});
    }
    if (borrowed_.data() != nullptr) {
        // The bytes stay where the read put them; the payload is unmasked into scratch_.
        auto* p = reinterpret_cast<const unsigned char*>(borrowed_.data());
        Status st = parse_header(p, borrowed_.size(), header, len, out);
        if (st != Status::kFrame) return st;
        auto n = static_cast<std::size_t>(len);
        if (defer_binary_unmask && out.opcode == WsOpcode::kBinary && out.fin && !out.rsv1) {
            out.masked = true;
            std::memcpy(out.mask, p + header, 4);
            out.payload = borrowed_.substr(header + 4, n);
        } else {
            if (scratch_size_ < n) {
                scratch_.reset(new char[n]);  // NOTE(perf): not zeroed; overwritten just below
                scratch_size_ = n;
            }
            auto* payload = reinterpret_cast<unsigned char*>(scratch_.get());
            unmask_copy(payload, p + header + 4, len, p + header);
            out.payload = {scratch_.get(), n};
        }
        borrowed_.remove_prefix(header + 4 + n);
        if (borrowed_.empty()) borrowed_ = {};
        return Status::kFrame;
    }
    if (consumed_ > 0 && consumed_ == buf_.size()) {
        buf_.clear();
        consumed_ = 0;
    }
    top_up();
    auto* p = reinterpret_cast<unsigned char*>(buf_.data() + consumed_);
    Status st = parse_header(p, buf_.size() - consumed_, header, len, out);
    if (st != Status::kFrame) return st;
    unsigned char* payload = p + header + 4;
    unmask_copy(payload, payload, len, p + header);
    out.payload = {reinterpret_cast<char*>(payload), static_cast<std::size_t>(len)};
    consumed_ += header + 4 + static_cast<std::size_t>(len);
    return Status::kFrame;
}

void ws_encode_header(std::string& out, WsOpcode opcode, std::uint64_t len, bool fin, bool rsv1) {
    unsigned char head[10];
    std::size_t n = 2;
    head[0] = static_cast<unsigned char>((fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) |
                                         static_cast<unsigned char>(opcode));
    if (len < 126) {
        head[1] = static_cast<unsigned char>(len);
    } else if (len <= 0xFFFF) {
        head[1] = 126;
        head[2] = static_cast<unsigned char>(len >> 8);
        head[3] = static_cast<unsigned char>(len);
        n = 4;
    } else {
        head[1] = 127;
        for (int i = 0; i < 8; ++i)
            head[2 + i] = static_cast<unsigned char>(len >> (56 - 8 * i));
        n = 10;
    }
    out.append(reinterpret_cast<char*>(head), n);
}

void ws_encode_frame(std::string& out, WsOpcode opcode, std::string_view payload, bool fin,
                     bool rsv1) {
    out.reserve(out.size() + 10 + payload.size());
    ws_encode_header(out, opcode, payload.size(), fin, rsv1);
    out.append(payload);
}

void ws_encode_close(std::string& out, int code, std::string_view reason) {
    if (code == ws_close::kNoStatus) {
        ws_encode_frame(out, WsOpcode::kClose, {});
        return;
    }
    std::string payload;
    payload.push_back(static_cast<char>((code >> 8) & 0xFF));
    payload.push_back(static_cast<char>(code & 0xFF));
    payload.append(reason.substr(0, 123));
    ws_encode_frame(out, WsOpcode::kClose, payload);
}

// ---------------------------------------------------------------------------------------------
// permessage-deflate (RFC 7692 §7.2)

struct WsDeflate::Streams {
    z_stream deflate{};
    z_stream inflate{};
    bool deflate_ok = false;
    bool inflate_ok = false;
    bool inflate_ended = false;  // the client's deflate stream ended inside this message
};

WsDeflate::WsDeflate(const DeflateParams& params) : z_(new Streams), params_(params) {
    // memLevel 5 as Uvicorn's websockets-sansio configuration.
    z_->deflate_ok = deflateInit2(&z_->deflate, Z_DEFAULT_COMPRESSION, Z_DEFLATED,
                                  -params.server_max_window_bits, 5, Z_DEFAULT_STRATEGY) == Z_OK;
    z_->inflate_ok = inflateInit2(&z_->inflate, -15) == Z_OK;
}

WsDeflate::~WsDeflate() {
    if (z_->deflate_ok) deflateEnd(&z_->deflate);
    if (z_->inflate_ok) inflateEnd(&z_->inflate);
}

bool WsDeflate::compress(std::string_view message, std::string& out) {
    if (!z_->deflate_ok) return false;
    z_stream& z = z_->deflate;
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(message.data()));
    z.avail_in = static_cast<uInt>(message.size());
    std::size_t start = out.size();
    // Python's compressobj.compress() then .flush(Z_SYNC_FLUSH), as websockets calls them: the
    // Z_NO_FLUSH call matters even for an empty message, or zlib skips the sync flush as a
    // duplicate and the message ends up with no bytes, which inflaters reject (00 00 ff ff
    // cannot start a block).
    for (int flush : {Z_NO_FLUSH, Z_SYNC_FLUSH}) {
        do {
            std::size_t chunk = message.size() / 2 + 64;
            std::size_t at = out.size();
            out.resize(at + chunk);
            z.next_out = reinterpret_cast<Bytef*>(out.data() + at);
            z.avail_out = static_cast<uInt>(chunk);
            int rc = deflate(&z, flush);
            out.resize(at + chunk - z.avail_out);
            if (rc != Z_OK && rc != Z_BUF_ERROR) return false;
        } while (z.avail_out == 0 || z.avail_in != 0);
    }
    if (out.size() - start >= 4 && out.compare(out.size() - 4, 4, "\x00\x00\xff\xff", 4) == 0) {
        out.resize(out.size() - 4);
    }
    if (params_.server_no_context_takeover) deflateReset(&z);
    return true;
}

WsDeflate::Inflate WsDeflate::decompress(std::string_view message, std::uint64_t max_size,
                                         std::string& out) {
    out.clear();
    return decompress_frame(message, true, max_size, out);
}

WsDeflate::Inflate WsDeflate::decompress_frame(std::string_view data, bool fin,
                                               std::uint64_t max_size, std::string& out) {
    if (!z_->inflate_ok) return Inflate::kError;
    static const char kTail[4] = {0x00, 0x00, static_cast<char>(0xff), static_cast<char>(0xff)};
    z_stream& z = z_->inflate;
    const std::size_t start = out.size();
    std::string_view tail = fin ? std::string_view(kTail, 4) : std::string_view();
    for (std::string_view in : {data, tail}) {
        if (in.empty() || z_->inflate_ended) continue;
        z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
        z.avail_in = static_cast<uInt>(in.size());
        do {
            // Never ask zlib for more than one byte past the limit: a zip bomb stops here.
            std::uint64_t room = max_size - std::min<std::uint64_t>(max_size, out.size() - start);
            std::uint64_t cap =
                room >= (std::uint64_t{1} << 30) ? (std::uint64_t{1} << 30) : room + 1;
            std::size_t chunk =
                static_cast<std::size_t>(std::min<std::uint64_t>(in.size() * 4 + 256, cap));
            std::size_t at = out.size();
            out.resize(at + chunk);
            z.next_out = reinterpret_cast<Bytef*>(out.data() + at);
            z.avail_out = static_cast<uInt>(chunk);
            int rc = inflate(&z, Z_SYNC_FLUSH);
            out.resize(at + chunk - z.avail_out);
            if (out.size() - start > max_size) return Inflate::kTooBig;
            if (rc == Z_STREAM_END) {
                // The client ended the deflate stream (BFINAL). zlib (like Python's
                // decompressobj) ignores what follows; the next message starts a new stream.
                z_->inflate_ended = true;
                break;
            }
            if (rc == Z_BUF_ERROR && z.avail_out != 0) break;  // no progress possible
            if (rc != Z_OK && rc != Z_BUF_ERROR) return Inflate::kError;
        } while (z.avail_in != 0 || z.avail_out == 0);
    }
    if (fin && (params_.client_no_context_takeover || z_->inflate_ended)) {
        inflateReset(&z);
        z_->inflate_ended = false;
    }
    return Inflate::kOk;
}

}  // namespace cppuvicorn::core
