// SPDX-License-Identifier: BSD-3-Clause
#include "core/metrics.hpp"

#include <sys/mman.h>
#include <sys/stat.h>

namespace cppuvicorn::core {

MetricsSlot* attach_metrics_slot(int fd, std::size_t index) {
    struct stat st {};
    if (fd < 0 || fstat(fd, &st) != 0 ||
        static_cast<std::size_t>(st.st_size) < metrics_region_size()) {
        return nullptr;
    }
    void* region = mmap(nullptr, metrics_region_size(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (region == MAP_FAILED) return nullptr;
    const auto* header = static_cast<const MetricsHeader*>(region);
    if (header->magic != kMetricsMagic || header->slot_size != sizeof(MetricsSlot) ||
        index >= header->slot_count) {
        munmap(region, metrics_region_size());
        return nullptr;
    }
    return metrics_slots(region) + index;
}

}  // namespace cppuvicorn::core
