// SPDX-License-Identifier: BSD-3-Clause
// WebSocket wire format (RFC 6455) and permessage-deflate (RFC 7692): the handshake accept key,
// extension negotiation, an incremental frame decoder, the frame encoder and the per-message
// compressor. Pure: no I/O and no Python here.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace cppuvicorn::core {

enum class WsOpcode : std::uint8_t {
    kContinuation = 0x0,
    kText = 0x1,
    kBinary = 0x2,
    kClose = 0x8,
    kPing = 0x9,
    kPong = 0xA,
};

// Close codes used by the server (RFC 6455 §7.4.1).
namespace ws_close {
constexpr int kNormal = 1000;
constexpr int kGoingAway = 1001;
constexpr int kProtocolError = 1002;
constexpr int kNoStatus = 1005;
constexpr int kAbnormal = 1006;
constexpr int kInvalidData = 1007;
constexpr int kTooBig = 1009;
constexpr int kInternalError = 1011;
constexpr int kServiceRestart = 1012;
}  // namespace ws_close

// base64(SHA-1(key + GUID)) (RFC 6455 §4.2.2).
std::string websocket_accept_key(std::string_view client_key);

// True if the close code may be sent on the wire (RFC 6455 §7.4).
bool valid_close_code(int code);
// True if `s` is valid UTF-8.
bool valid_utf8(std::string_view s);

// Where and why `s` is not UTF-8, worded as CPython's decoder words it ("invalid start byte",
// "invalid continuation byte", "unexpected end of data"; the position is the start of the bad
// sequence), because close reasons carry that text on the wire.
struct Utf8Error {
    const char* reason;
    std::size_t position;
};
std::optional<Utf8Error> utf8_error(std::string_view s);

// permessage-deflate parameters agreed with the client.
struct DeflateParams {
    bool server_no_context_takeover = false;
    bool client_no_context_takeover = false;
    int server_max_window_bits = 15;  // our compressor's window
    int client_max_window_bits = 15;  // the client's compressor's window (our inflater)
    std::string response;             // the Sec-WebSocket-Extensions value to answer with
};

// Negotiates permessage-deflate from a Sec-WebSocket-Extensions header value the way the
// `websockets` library's ServerPerMessageDeflateFactory(server_max_window_bits=12,
// client_max_window_bits=12) does: the first acceptable offer wins.
std::optional<DeflateParams> negotiate_permessage_deflate(std::string_view offers,
                                                          int server_max_window_bits = 12,
                                                          int client_max_window_bits = 12);

// Writes `len` bytes of `src` XOR the 4-byte `mask` (starting at mask byte 0) to `dst`, which
// may be `src`.
void ws_unmask_copy(char* dst, const char* src, std::size_t len, const unsigned char mask[4]);

// One decoded frame. `payload` is unmasked and lives until the decoder's next feed(),
// feed_borrowed(), next() or trim(); or, when `masked` (see WsDecoder::next), it still lies
// masked with `mask` in the borrowed read, and lives as long as that buffer.
struct WsFrame {
    bool fin = true;
    bool rsv1 = false;
    bool masked = false;
    WsOpcode opcode = WsOpcode::kText;
    unsigned char mask[4] = {};
    std::string_view payload;
    // Writes the unmasked payload (payload.size() bytes) to `dst`.
    void unmask_to(char* dst) const {
        if (masked) {
            ws_unmask_copy(dst, payload.data(), payload.size(), mask);
        } else if (!payload.empty()) {
            std::memcpy(dst, payload.data(), payload.size());
        }
    }
};

// Incremental decoder for client frames: feed bytes, take frames while next() returns them.
// Header checks run in the order of the `websockets` library's Frame.parse/Frame.check, with
// its close reasons, but as soon as the header is in (not after the payload): opcode, masking,
// size limit, reserved bits, control frame length, fragmented control frame. RSV1 on a data
// frame is left to the caller when `allow_rsv1` (permessage-deflate decides what it means).
class WsDecoder {
  public:
    explicit WsDecoder(std::uint64_t max_frame_size, bool allow_rsv1)
        : max_frame_size_(max_frame_size), allow_rsv1_(allow_rsv1) {}

    // Appends a copy of `data`.
    void feed(std::string_view data);
    // NOTE(perf): the read path. Frames are decoded where `data` lies (no copy of the read; a
    // payload is unmasked straight into the decoder's scratch). When an earlier read left a
    // frame incomplete, only the bytes that complete it are copied after it; the frames
    // behind it are again decoded in place. The caller calls retain() before `data` dies: it
    // copies what is left.
    void feed_borrowed(std::string_view data);
    void retain();
    // Limit for the next frame's payload (the message limit minus what the message holds).
    void set_max_frame_size(std::uint64_t n) { max_frame_size_ = n; }
    void set_allow_rsv1(bool allow) { allow_rsv1_ = allow; }
    // Bytes received but not returned as frames yet.
    std::size_t buffered() const {
        return borrowed_.data() != nullptr ? borrowed_.size()
                                           : buf_.size() - consumed_ + tail_.size();
    }
    // With nothing buffered, frees the buffers if they grew beyond `keep` bytes (the last
    // frame's payload view dies).
    void trim(std::size_t keep) {
        if (buffered() != 0) return;
        if (buf_.capacity() > keep) {
            std::string().swap(buf_);
            consumed_ = 0;
        }
        if (scratch_size_ > keep) {
            scratch_.reset();
            scratch_size_ = 0;
        }
    }

    enum class Status : std::uint8_t { kFrame, kNeedMore, kError };
    // Decodes the next complete frame. On kError, error_code() says which close code to send.
    // NOTE(perf): with `defer_binary_unmask`, a whole uncompressed binary message (one frame,
    // FIN set, no RSV1) decoded from a borrowed read comes back `masked`: its receiver
    // unmasks it straight into its own storage with WsFrame::unmask_to, one pass over the
    // payload instead of an unmask into scratch and a copy out of it.
    Status next(WsFrame& out, bool defer_binary_unmask = false);
    int error_code() const { return error_code_; }
    const char* error_reason() const { return error_reason_; }
    // With error_code() 1009: the payload length the frame announced.
    std::uint64_t too_big_length() const { return too_big_length_; }

  private:
    Status fail(int code, const char* reason) {
        error_code_ = code;
        error_reason_ = reason;
        return Status::kError;
    }

    // Parses the frame at the start of `p` (`avail` bytes): its header length and payload
    // length, or kNeedMore / kError. Sets `out`'s flags and opcode.
    Status parse_header(const unsigned char* p, std::size_t avail, std::size_t& header,
                        std::uint64_t& len, WsFrame& out);
    // The payload length at the start of `p` (`avail` bytes) and the header's length up to
    // the mask; false until the bytes that say it are there. No checks.
    static bool read_length(const unsigned char* p, std::size_t avail, std::size_t& header,
                            std::uint64_t& len);
    // Moves from tail_ into buf_ what the first frame in buf_ still lacks (as far as tail_
    // goes): no more, so that the frames after it stay in the read.
    void top_up();

    std::string buf_;
    std::size_t consumed_ = 0;   // bytes of buf_ already returned
    std::string_view borrowed_;  // feed_borrowed's bytes not returned yet (null: none)
    // feed_borrowed's bytes while buf_ holds a frame an earlier read left incomplete: they
    // follow buf_, and become borrowed_ once buf_ is drained.
    std::string_view tail_;
    std::unique_ptr<char[]> scratch_;  // unmasked payload of a frame decoded from borrowed_
    std::size_t scratch_size_ = 0;
    std::uint64_t max_frame_size_;
    std::uint64_t too_big_length_ = 0;
    bool allow_rsv1_;
    int error_code_ = 0;
    const char* error_reason_ = "";
};

// Appends the header of an unmasked server frame whose payload is `len` bytes.
void ws_encode_header(std::string& out, WsOpcode opcode, std::uint64_t len, bool fin = true,
                      bool rsv1 = false);
// Appends one unmasked server frame.
void ws_encode_frame(std::string& out, WsOpcode opcode, std::string_view payload, bool fin = true,
                     bool rsv1 = false);
// Appends a close frame with `code` and `reason` (code 1005 → an empty close frame).
void ws_encode_close(std::string& out, int code, std::string_view reason);

// permessage-deflate compressor and decompressor for one connection (zlib raw deflate).
class WsDeflate {
  public:
    explicit WsDeflate(const DeflateParams& params);
    ~WsDeflate();
    WsDeflate(const WsDeflate&) = delete;
    WsDeflate& operator=(const WsDeflate&) = delete;

    // Compresses a whole message (RFC 7692 §7.2.1: the trailing 00 00 ff ff is removed).
    bool compress(std::string_view message, std::string& out);
    // A buffer for compress()'s output, kept with the compressor: sessions without
    // compression do not carry it.
    std::string& scratch() { return scratch_; }
    // Decompresses a whole message; fails if the result would exceed max_size.
    enum class Inflate : std::uint8_t { kOk, kTooBig, kError };
    Inflate decompress(std::string_view message, std::uint64_t max_size, std::string& out);
    // Decompresses one frame of a message and appends the result to `out`; `fin` marks the
    // message's last frame (the removed 00 00 ff ff tail is fed back then, and the context is
    // reset without client context takeover). kTooBig if this frame would append more than
    // `max_size` bytes.
    Inflate decompress_frame(std::string_view data, bool fin, std::uint64_t max_size,
                             std::string& out);

  private:
    struct Streams;
    std::string scratch_;
    std::unique_ptr<Streams> z_;
    DeflateParams params_;
};

}  // namespace cppuvicorn::core
