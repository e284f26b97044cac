// SPDX-License-Identifier: BSD-3-Clause
// Spare output buffers, kept by the server between loop turns. A WebSocket session gives its
// output buffer back whenever it drains (an idle session holds none); a busy one that corks
// large messages would then take a fresh 64 KiB from malloc every turn, and glibc, which gives
// the top of its heap back to the kernel at 128 KiB free, made that memory fresh pages each
// time: 0.6-0.8 page faults per 16 KiB message. The pool hands the same buffers round instead,
// holds at most max_bytes, and lets them all go after a sweep interval without use.
// No Python here.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace cppuvicorn::core {

class BufferPool {
  public:
    // Buffers outside [kMinKeep, kMaxKeep] bytes of capacity are not kept.
    static constexpr std::size_t kMinKeep = 16 * 1024;
    static constexpr std::size_t kMaxKeep = (1024 + 1) * 1024;

    explicit BufferPool(std::size_t max_bytes) : max_bytes_(max_bytes) {}

    // Room for at least `n` bytes in `s`, whose content stays: a pooled buffer when one is big
    // enough, else s.reserve(n).
    void acquire(std::string& s, std::size_t n);
    // `s` is not needed for now: an empty one worth keeping goes to the pool, any other empty
    // one is freed. A non-empty `s` is left alone.
    void release(std::string& s);
    // Frees the pooled buffers if none was taken since the last call (the server's sweep).
    void trim_unused();

    std::size_t size() const { return free_.size(); }
    std::size_t bytes() const { return bytes_; }

  private:
    std::vector<std::string> free_;
    std::size_t bytes_ = 0;
    std::size_t max_bytes_;
    bool used_ = false;
};

}  // namespace cppuvicorn::core
