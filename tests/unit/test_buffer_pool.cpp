// SPDX-License-Identifier: BSD-3-Clause
// BufferPool: spare output buffers handed round between connections and loop turns.
#include "core/buffer_pool.hpp"

#include <catch2/catch.hpp>

#include <string>

using cppuvicorn::core::BufferPool;

namespace {

std::string with_capacity(std::size_t n) {
    std::string s;
    s.reserve(n);
    return s;
}

}  // namespace

TEST_CASE("BufferPool: a released buffer is the next one acquired", "[buffer_pool]") {
    BufferPool pool(1 << 20);
    std::string a = with_capacity(64 * 1024);
    const char* memory = a.data();
    pool.release(a);
    REQUIRE(a.capacity() < BufferPool::kMinKeep);  // the connection holds nothing now
    REQUIRE(pool.size() == 1);
    REQUIRE(pool.bytes() >= 64 * 1024);

    std::string b;
    pool.acquire(b, 32 * 1024);
    REQUIRE(b.data() == memory);
    REQUIRE(b.empty());
    REQUIRE(pool.size() == 0);
    REQUIRE(pool.bytes() == 0);
}

TEST_CASE("BufferPool: acquire keeps what the string already holds", "[buffer_pool]") {
    BufferPool pool(1 << 20);
    std::string spare = with_capacity(64 * 1024);
    pool.release(spare);
    std::string s = "\x8a\x00";  // a pong frame queued before the cork
    pool.acquire(s, 40 * 1024);
    REQUIRE(s == "\x8a\x00");
    REQUIRE(s.capacity() >= 40 * 1024);
    REQUIRE(pool.size() == 0);
}

TEST_CASE("BufferPool: without a big enough spare, acquire reserves", "[buffer_pool]") {
    BufferPool pool(1 << 20);
    std::string small = with_capacity(BufferPool::kMinKeep);
    pool.release(small);
    REQUIRE(pool.size() == 1);
    std::string s;
    pool.acquire(s, 64 * 1024);
    REQUIRE(s.capacity() >= 64 * 1024);
    REQUIRE(pool.size() == 1);  // the small spare stays
    // A string that is already big enough takes nothing.
    std::string big = with_capacity(128 * 1024);
    const char* memory = big.data();
    pool.acquire(big, 64 * 1024);
    REQUIRE(big.data() == memory);
    REQUIRE(pool.size() == 1);
}

TEST_CASE("BufferPool: what is kept, and what is freed", "[buffer_pool]") {
    BufferPool pool(200 * 1024);
    SECTION("a buffer that still holds bytes is left alone") {
        std::string s = with_capacity(64 * 1024);
        s = "unsent";
        pool.release(s);
        REQUIRE(s == "unsent");
        REQUIRE(pool.size() == 0);
    }
    SECTION("too small or too big to keep: freed") {
        std::string tiny = with_capacity(1024);
        std::string huge = with_capacity(BufferPool::kMaxKeep + 1);
        pool.release(tiny);
        pool.release(huge);
        REQUIRE(pool.size() == 0);
        REQUIRE(huge.capacity() < BufferPool::kMinKeep);
    }
    SECTION("the pool holds at most its byte budget") {
        for (int i = 0; i < 5; ++i) {
            std::string s = with_capacity(64 * 1024);
            pool.release(s);
            REQUIRE(s.capacity() < BufferPool::kMinKeep);
        }
        REQUIRE(pool.size() == 3);
        REQUIRE(pool.bytes() <= 200 * 1024);
    }
}

TEST_CASE("BufferPool: a sweep interval without use frees the spares", "[buffer_pool]") {
    BufferPool pool(1 << 20);
    std::string s = with_capacity(64 * 1024);
    pool.release(s);
    std::string t;
    pool.acquire(t, 64 * 1024);  // used in this interval
    pool.release(t);
    pool.trim_unused();
    REQUIRE(pool.size() == 1);  // kept: it was taken since the last sweep
    pool.trim_unused();
    REQUIRE(pool.size() == 0);  // a whole interval unused
    REQUIRE(pool.bytes() == 0);
}
