// SPDX-License-Identifier: BSD-3-Clause
// LiveList: an intrusive doubly linked list of the cycles whose asyncio Task still runs, for
// the task count and for cancelling them at the graceful-shutdown timeout. O(1) insert and
// remove, no allocation. `Links` is the cycle's {prev, next} record, reached through `links`.
#pragma once

#include <vector>

namespace cppuvicorn::asgi {

template <class T, class Links, Links& (*links)(T*)>
class LiveList {
  public:
    void push(T* c) {
        Links& l = links(c);
        l.prev = nullptr;
        l.next = head_;
        if (head_ != nullptr) links(head_).prev = c;
        head_ = c;
    }

    void remove(T* c) {
        Links& l = links(c);
        if (l.prev != nullptr) {
            links(l.prev).next = l.next;
        } else {
            head_ = l.next;
        }
        if (l.next != nullptr) links(l.next).prev = l.prev;
        l.prev = l.next = nullptr;
    }

    // Calls f on a snapshot, so f may remove entries.
    template <class F>
    void for_each(F f) const {
        std::vector<T*> all;
        for (T* c = head_; c != nullptr; c = links(c).next)
            all.push_back(c);
        for (T* c : all)
            f(c);
    }

  private:
    T* head_ = nullptr;
};

}  // namespace cppuvicorn::asgi
