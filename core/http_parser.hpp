// SPDX-License-Identifier: BSD-3-Clause
// HttpParser: a strict HTTP/1.1 request parser on top of llhttp. It copies the request head
// into its own buffer (so the read buffer can be reused between reads), lowercases header
// names, enforces the head limits, and reports to a ParserSink. No Python, no I/O here.
#pragma once

#include "core/config.hpp"
#include "core/request_handler.hpp"

#include <llhttp.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace cppuvicorn::core {

// Receives parser events. Return 0 to continue, kPause from on_message_end to stop the parser
// right after the message (for pipelining: the next request waits for the response).
class ParserSink {
  public:
    static constexpr int kPause = HPE_PAUSED;
    virtual void on_head(const RequestHead& head) = 0;
    virtual void on_body(std::string_view chunk) = 0;
    virtual int on_message_end() = 0;

  protected:
    ~ParserSink() = default;
};

// ParseResult::detail when a CR or LF in a request head is not part of a CRLF. The check runs
// over each buffer before llhttp does, so on input with several defects which one is reported
// may depend on how the input was split (the status, 400, does not).
inline constexpr std::string_view kBareCrLf = "bare CR or LF in the request head";
// ParseResult::detail for a byte in the request target that is not printable ASCII (a control
// character, or a byte over 0x7F). The check runs per URL span
// llhttp hands over (at a space, or at the end of a buffer), while llhttp checks each byte as
// it goes: on input with several defects the split decides which one is reported (400 both).
inline constexpr std::string_view kBadTargetByte = "invalid byte in the request target";

struct ParseResult {
    enum class Kind : std::uint8_t { kNeedMore, kPaused, kError };
    Kind kind = Kind::kNeedMore;
    std::size_t consumed = 0;  // bytes consumed from the input
    int status = 0;            // with kError: the HTTP status to answer (400, 413, 414, 431, 505)
    std::string_view detail;   // with kError: why (llhttp's reason or ours); static storage
};

class HttpParser {
  public:
    HttpParser(ParserSink& sink, const ServerConfig& config);
    ~HttpParser() { park_buffers(); }  // e.g. after a WebSocket upgrade: the set is reused
    HttpParser(const HttpParser&) = delete;
    HttpParser& operator=(const HttpParser&) = delete;

    // Feed bytes. Stops at the end of the input, after a message whose on_message_end
    // asked to pause, or at the first error. Errors are sticky: every later call returns the
    // same error, consumes nothing and calls nothing. While paused (before resume()), a call
    // returns kPaused and consumes nothing.
    ParseResult execute(std::string_view data);

    // Continue after kPaused: the next execute() starts a new message.
    void resume() { llhttp_resume(&parser_); }

    // Between requests (not inside a message, the last head's handler released): gives the
    // head buffers back to a per-thread pool, so an idle keep-alive connection holds none;
    // the next message takes a set from the pool again (no allocation when one is there).
    void park_buffers();

    // True between the first byte of a message and its end.
    bool in_message() const { return in_message_; }
    // True while inside the head of a message (for the head timeout).
    bool in_head() const { return in_message_ && !head_done_; }

    // Unparsed bytes waiting behind the current request (the connection's, kept with the
    // parser: it goes at a WebSocket upgrade, and with it this buffer).
    std::string& pending() { return pending_; }

  private:
    std::string pending_;
    template <auto Member, class... Args>
    friend int parser_thunk(llhttp_t* p, Args... args) noexcept;
    friend struct ParserSettings;

    int handle_message_begin();
    int handle_url(const char* at, std::size_t len);
    int handle_header_field(const char* at, std::size_t len);
    int handle_header_value(const char* at, std::size_t len);
    int handle_headers_complete();
    int handle_body(const char* at, std::size_t len);
    int handle_message_complete();
    int handle_chunk_header();
    int handle_chunk_extension_name(const char* at, std::size_t len);
    int handle_chunk_extension_name_complete();
    bool scan_head(std::string_view data);
    int fail(const char* reason);  // sets a "STATUS:reason" user error
    bool grow_head(std::size_t len);
    bool follows_fold(const char* at, std::size_t len) const;
    void remember_tail(std::string_view done);

    struct Span {
        std::uint32_t offset = 0;
        std::uint32_t len = 0;
    };
    struct RawHeader {
        Span name;
        Span value;
    };

    struct BufferSet;
    static std::vector<BufferSet>& buffer_pool();
    void take_buffers();

    llhttp_t parser_{};
    ParserSink& sink_;
    const ServerConfig& config_;
    std::string head_buf_;  // url, header names (lowercased) and values, back to back
    Span url_;
    std::vector<RawHeader> raw_headers_;
    RequestHead head_;
    ParseResult failure_;               // the first error, returned again by every later execute()
    const char* user_error_ = nullptr;  // fail()'s reason: llhttp overwrites it for some callbacks
    const char* exec_begin_ = nullptr;  // the buffer being executed
    // How the bytes executed so far end: for spotting an obs-fold across execute() calls.
    enum class Tail : std::uint8_t { kOther, kLf, kLfSpace } tail_ = Tail::kOther;
    std::uint64_t body_bytes_ = 0;  // of the current message, for max_body_size
    bool has_buffers_ = false;      // head_buf_ and the header vectors are ours (see park_buffers)
    // scan_head(): llhttp 8.1 takes a bare LF as the end of the request line and of the header
    // section; RFC 9112 §2.2 lets a server reject it, and a proxy in front may not agree on
    // where such a line ends. Every LF in a head must follow a CR.
    struct ScanState {
        std::size_t line;
        char last;
        bool head;
        bool started;
    };
    std::size_t scan_line_ = 0;     // bytes of the current head line seen so far
    char scan_last_ = '\n';         // the last byte scanned (across execute() calls)
    bool scan_head_ = true;         // the next bytes belong to a request head
    bool scan_started_ = false;     // the request line has started (CRLFs before it are skipped)
    bool auto_resume_ = false;      // paused at a message end the sink did not pause at
    std::size_t ext_name_len_ = 0;  // of the chunk extension being read
    bool in_value_ = false;
    bool in_message_ = false;
    bool head_done_ = false;
};

}  // namespace cppuvicorn::core
