// SPDX-License-Identifier: BSD-3-Clause
#include "core/buffer_pool.hpp"

#include <utility>

namespace cppuvicorn::core {

void BufferPool::acquire(std::string& s, std::size_t n) {
    if (s.capacity() >= n) return;
    used_ = true;
    if (!free_.empty() && free_.back().capacity() >= n) {
        std::string& b = free_.back();
        bytes_ -= b.capacity();
        b.append(s);  // what `s` holds already (a control frame, a header) keeps its place
        s.swap(b);
        free_.pop_back();  // frees the old, smaller buffer of `s`
        return;
    }
    s.reserve(n);
}

void BufferPool::release(std::string& s) {
    if (!s.empty()) return;
    std::size_t cap = s.capacity();
    if (cap >= kMinKeep && cap <= kMaxKeep && bytes_ + cap <= max_bytes_) {
        bytes_ += cap;
        free_.push_back(std::move(s));
    }
    std::string().swap(s);
}

void BufferPool::trim_unused() {
    if (!std::exchange(used_, false)) {
        std::vector<std::string>().swap(free_);
        bytes_ = 0;
    }
}

}  // namespace cppuvicorn::core
