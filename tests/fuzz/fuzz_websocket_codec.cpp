// SPDX-License-Identifier: BSD-3-Clause
// libFuzzer target: the WebSocket wire format (core/websocket_codec.hpp).
//
// Input layout (see make_corpus.py): byte 0 picks the mode (byte 0 % 3), the rest depends on it.
//
//   0 WsDecoder     byte 1: bit 0 allow RSV1, bits 1-2 max frame size (125, 1 KiB, 64 KiB,
//                   16 MiB); byte 2: seed of the feed splits; rest: client frames.
//                   Decoded in one feed and in random splits: the same frames and the same
//                   error; frames respect the size limit and RFC 6455's header rules; an error
//                   is sticky.
//   1 WsDeflate     byte 1: bits 0-2 window bits (8 + n, at least 9), bit 3 client no context
//                   takeover, bit 4 server no context takeover; byte 2: size cap (0, 1, 100,
//                   4 KiB, 64 KiB, 1 MiB); byte 3: seed of the frame splits; rest: data.
//                   decompress() of the data never returns more than the cap; per-frame
//                   decompress_frame() agrees with it when it succeeds; compress() then
//                   decompress() on a peer gives the data back, twice in a row (the context).
//   2 negotiate     byte 1: bits 0-2 server bits (8 + n), bits 3-5 client bits (8 + n);
//                   rest: a Sec-WebSocket-Extensions value. An accepted offer has sane window
//                   bits, a clean response header value, and a working WsDeflate.
#include "core/websocket_codec.hpp"

#include "tests/fuzz/fuzz_check.hpp"
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace cppuvicorn::core;

// xorshift32: split sizes from a one-byte seed.
struct Splits {
    std::uint32_t state;
    explicit Splits(std::uint8_t seed) : state(0x9E3779B9u ^ (seed * 0x01000193u)) {}
    std::size_t next(std::size_t max) {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        // Mostly small pieces, sometimes large ones.
        std::size_t n = (state & 0x100) != 0 ? 1 + (state % 8) : 1 + (state % 300);
        return n < max ? n : max;
    }
};

// ---------------------------------------------------------------------------------------------
// Frames

struct DecodeResult {
    std::string frames;  // fin/rsv1/opcode/length/payload of every frame, back to back
    int error_code = 0;
    std::string error_reason;
    std::uint64_t too_big = 0;
};

void take_frames(WsDecoder& d, DecodeResult& out, std::uint64_t max_frame, bool allow_rsv1,
                 bool defer = false) {
    if (out.error_code != 0) return;
    WsFrame f;
    while (true) {
        WsDecoder::Status s = d.next(f, defer);
        if (s == WsDecoder::Status::kNeedMore) return;
        if (s == WsDecoder::Status::kError) {
            out.error_code = d.error_code();
            out.error_reason = d.error_reason();
            out.too_big = d.too_big_length();
            FUZZ_CHECK(out.error_code == 1002 || out.error_code == 1009);
            FUZZ_CHECK(!out.error_reason.empty());
            FUZZ_CHECK(out.error_code != 1009 || out.too_big > max_frame);
            // Sticky: asking again gives the same answer.
            FUZZ_CHECK(d.next(f) == WsDecoder::Status::kError);
            FUZZ_CHECK(d.error_code() == out.error_code);
            return;
        }
        auto op = static_cast<int>(f.opcode);
        bool control = op >= 8;
        FUZZ_CHECK(op == 0 || op == 1 || op == 2 || op == 8 || op == 9 || op == 10);
        FUZZ_CHECK(f.payload.size() <= max_frame);
        FUZZ_CHECK(!control || (f.fin && f.payload.size() <= 125 && !f.rsv1));
        FUZZ_CHECK(!f.rsv1 || allow_rsv1);
        out.frames += f.fin ? 'F' : 'f';
        out.frames += f.rsv1 ? 'R' : 'r';
        out.frames += static_cast<char>('a' + op);
        out.frames += std::to_string(f.payload.size());
        out.frames += ':';
        FUZZ_CHECK(!f.masked || (defer && op == 2 && f.fin && !f.rsv1));
        std::size_t at = out.frames.size();
        out.frames.resize(at + f.payload.size());
        f.unmask_to(out.frames.data() + at);
    }
}

void fuzz_decoder(const std::uint8_t* data, std::size_t size) {
    if (size < 2) return;
    const bool allow_rsv1 = (data[0] & 1) != 0;
    // As a WebSocket connection decodes: whole binary frames left masked for the receiver.
    const bool defer = (data[0] & 8) != 0;
    static constexpr std::uint64_t kMax[4] = {125, 1024, 65536, 16777216};
    const std::uint64_t max_frame = kMax[(data[0] >> 1) & 3];
    Splits splits(data[1]);
    std::string_view stream(reinterpret_cast<const char*>(data + 2), size - 2);

    DecodeResult whole;
    {
        WsDecoder d(max_frame, allow_rsv1);
        d.feed(stream);
        take_frames(d, whole, max_frame, allow_rsv1);
    }
    DecodeResult split;
    {
        WsDecoder d(max_frame, allow_rsv1);
        std::string_view rest = stream;
        std::size_t fed = 0;
        while (!rest.empty() && split.error_code == 0) {
            std::size_t n = splits.next(rest.size());
            std::string piece(rest.substr(0, n));  // the caller's buffer dies after feed()
            rest.remove_prefix(n);
            d.feed(piece);
            fed += n;
            take_frames(d, split, max_frame, allow_rsv1);
            FUZZ_CHECK(d.buffered() <= fed);
        }
    }
    // As a connection reads: feed_borrowed, frames, retain, and the read buffer is reused.
    DecodeResult borrowed;
    {
        WsDecoder d(max_frame, allow_rsv1);
        Splits again(data[1]);
        std::string_view rest = stream;
        std::string read_buffer;
        while (!rest.empty() && borrowed.error_code == 0) {
            std::size_t n = again.next(rest.size());
            read_buffer.assign(rest.substr(0, n));
            rest.remove_prefix(n);
            d.feed_borrowed(read_buffer);
            take_frames(d, borrowed, max_frame, allow_rsv1, defer);
            d.retain();
            std::fill(read_buffer.begin(), read_buffer.end(), '\xAA');
        }
    }
    FUZZ_CHECK(whole.frames == split.frames);
    FUZZ_CHECK(whole.error_code == split.error_code);
    FUZZ_CHECK(whole.error_reason == split.error_reason);
    FUZZ_CHECK(whole.too_big == split.too_big);
    FUZZ_CHECK(whole.frames == borrowed.frames);
    FUZZ_CHECK(whole.error_code == borrowed.error_code);
    FUZZ_CHECK(whole.error_reason == borrowed.error_reason);
    FUZZ_CHECK(whole.too_big == borrowed.too_big);
}

// ---------------------------------------------------------------------------------------------
// permessage-deflate

DeflateParams make_params(std::uint8_t b) {
    DeflateParams p;
    int bits = 8 + (b & 7);
    if (bits < 9) bits = 9;
    p.server_max_window_bits = bits;
    p.client_max_window_bits = bits;
    p.client_no_context_takeover = (b & 8) != 0;
    p.server_no_context_takeover = (b & 16) != 0;
    return p;
}

void fuzz_deflate(const std::uint8_t* data, std::size_t size) {
    if (size < 3) return;
    const DeflateParams params = make_params(data[0]);
    static constexpr std::uint64_t kCaps[6] = {0, 1, 100, 4096, 65536, 1u << 20};
    const std::uint64_t cap = kCaps[data[1] % 6];
    Splits splits(data[2]);
    std::string_view input(reinterpret_cast<const char*>(data + 3), size - 3);

    // Arbitrary bytes as one compressed message.
    std::string whole;
    WsDeflate::Inflate whole_rc;
    {
        WsDeflate z(params);
        whole_rc = z.decompress(input, cap, whole);
        if (whole_rc == WsDeflate::Inflate::kOk) FUZZ_CHECK(whole.size() <= cap);
        if (whole_rc == WsDeflate::Inflate::kTooBig) FUZZ_CHECK(whole.size() <= cap + 1);
        // The inflater is usable for the next message whatever happened.
        std::string again;
        (void)z.decompress(input, cap, again);
    }
    // The same bytes as the frames of one message.
    {
        WsDeflate z(params);
        std::string out;
        std::string_view rest = input;
        WsDeflate::Inflate rc = WsDeflate::Inflate::kOk;
        do {
            std::size_t n = splits.next(rest.size());
            std::string frame(rest.substr(0, n));
            rest.remove_prefix(n);
            std::size_t before = out.size();
            rc = z.decompress_frame(frame, rest.empty(), cap, out);
            if (rc == WsDeflate::Inflate::kOk) FUZZ_CHECK(out.size() - before <= cap);
            if (rc == WsDeflate::Inflate::kTooBig) FUZZ_CHECK(out.size() - before <= cap + 1);
        } while (!rest.empty() && rc == WsDeflate::Inflate::kOk);
        if (whole_rc == WsDeflate::Inflate::kOk) {
            FUZZ_CHECK(rc == WsDeflate::Inflate::kOk);
            FUZZ_CHECK(out == whole);
        }
    }
    // Round trip: our compressor, a peer's inflater with the same parameters, two messages.
    {
        // The peer resets its inflater exactly when our compressor resets its context.
        DeflateParams peer = params;
        peer.client_no_context_takeover = params.server_no_context_takeover;
        WsDeflate sender(params);
        WsDeflate receiver(peer);
        std::string second(input.rbegin(), input.rend());
        for (std::string_view message : {input, std::string_view(second), input}) {
            std::string compressed;
            FUZZ_CHECK(sender.compress(message, compressed));
            std::string back;
            FUZZ_CHECK(receiver.decompress(compressed, message.size(), back) ==
                       WsDeflate::Inflate::kOk);
            FUZZ_CHECK(back == message);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Negotiation

void fuzz_negotiate(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return;
    const int server_bits = 8 + (data[0] & 7);
    const int client_bits = 8 + ((data[0] >> 3) & 7);
    std::string_view offers(reinterpret_cast<const char*>(data + 1), size - 1);
    std::optional<DeflateParams> p = negotiate_permessage_deflate(offers, server_bits, client_bits);
    if (!p) return;
    FUZZ_CHECK(p->server_max_window_bits >= 9 && p->server_max_window_bits <= 15);
    FUZZ_CHECK(p->server_max_window_bits <= server_bits);
    FUZZ_CHECK(p->client_max_window_bits >= 8 && p->client_max_window_bits <= 15);
    FUZZ_CHECK(p->response.rfind("permessage-deflate", 0) == 0);
    for (unsigned char c : p->response)
        FUZZ_CHECK(c >= 0x20 && c < 0x7f);
    // The offer accepted must be one the client made.
    FUZZ_CHECK(offers.find("permessage-deflate") != std::string_view::npos);
    WsDeflate z(*p);
    std::string compressed;
    FUZZ_CHECK(z.compress("hello hello hello", compressed));
    std::string back;
    WsDeflate peer(*p);
    FUZZ_CHECK(peer.decompress(compressed, 100, back) == WsDeflate::Inflate::kOk);
    FUZZ_CHECK(back == "hello hello hello");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    switch (data[0] % 3) {
        case 0:
            fuzz_decoder(data + 1, size - 1);
            break;
        case 1:
            fuzz_deflate(data + 1, size - 1);
            break;
        default:
            fuzz_negotiate(data + 1, size - 1);
            break;
    }
    return 0;
}
