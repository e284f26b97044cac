// SPDX-License-Identifier: BSD-3-Clause
// Each parser follows the CPython 3.11 function named in its comment step by step, because the
// point is to accept and refuse exactly what Uvicorn (running on CPython) does: a host this code
// reads differently would be trusted, or not, against the user's --forwarded-allow-ips.
#include "core/proxy_headers.hpp"

#include <algorithm>
#include <array>
#include <bit>

namespace cppuvicorn::core {

namespace {

constexpr std::size_t kMaxIntDigits = 4300;  // sys.int_info.default_max_str_digits

bool is_ascii_digit(unsigned char c) {
    return c >= '0' && c <= '9';
}

int hex_value(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// Py_UNICODE_ISSPACE over Latin-1.
bool is_python_space(unsigned char c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F) || c == 0x20 || c == 0x85 ||
           c == 0xA0;
}

// What int() skips around the digits: _PyUnicode_TransformDecimalAndSpaceToASCII keeps ASCII
// as it is (so \x1c-\x1f stay and are not Py_ISSPACE) and turns \x85 and \xa0 into spaces.
bool is_int_space(unsigned char c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0;
}

bool all_ascii_digits(std::string_view s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
        return is_ascii_digit(static_cast<unsigned char>(c));
    });
}

// ipaddress._BaseV4._ip_int_from_string with _parse_octet: exactly four decimal octets, 1-3
// digits each, no leading zero, at most 255.
std::optional<std::uint32_t> parse_ipv4(std::string_view s) {
    std::uint32_t value = 0;
    int octets = 0;
    while (true) {
        std::size_t dot = s.find('.');
        std::string_view octet = s.substr(0, dot);
        if (++octets > 4 || !all_ascii_digits(octet) || octet.size() > 3) return std::nullopt;
        if (octet.size() > 1 && octet[0] == '0') return std::nullopt;
        unsigned n = 0;
        for (char c : octet)
            n = n * 10 + static_cast<unsigned>(c - '0');
        if (n > 255) return std::nullopt;
        value = (value << 8) | n;
        if (dot == std::string_view::npos) break;
        s.remove_prefix(dot + 1);
    }
    if (octets != 4) return std::nullopt;
    return value;
}

// ipaddress._BaseV6._ip_int_from_string (the zone already split off).
bool parse_ipv6_int(std::string_view s, std::uint64_t& hi, std::uint64_t& lo) {
    constexpr int kHextets = 8;
    if (s.empty()) return false;
    // A part is hextet text, or a hextet value from a dotted IPv4 tail (value >= 0).
    struct Part {
        std::string_view text;
        int value = -1;
        bool empty() const { return value < 0 && text.empty(); }
    };
    // More than 9 parts fail below whatever they hold; the IPv4 tail adds one.
    std::array<Part, kHextets + 2> parts;
    std::size_t n = 0;
    while (true) {
        std::size_t colon = s.find(':');
        if (n == kHextets + 1) return false;
        parts[n++].text = s.substr(0, colon);
        if (colon == std::string_view::npos) break;
        s.remove_prefix(colon + 1);
    }
    if (n < 3) return false;
    if (parts[n - 1].text.find('.') != std::string_view::npos) {
        auto v4 = parse_ipv4(parts[n - 1].text);
        if (!v4) return false;
        parts[n - 1] = Part{{}, static_cast<int>(*v4 >> 16)};
        parts[n++] = Part{{}, static_cast<int>(*v4 & 0xFFFF)};
    }
    if (n > kHextets + 1) return false;

    std::size_t skip = 0;  // 0: no "::" inside (index 0 is never the skip index)
    for (std::size_t i = 1; i + 1 < n; ++i) {
        if (!parts[i].empty()) continue;
        if (skip != 0) return false;  // at most one "::"
        skip = i;
    }
    std::size_t parts_hi = n;
    std::size_t parts_lo = 0;
    std::size_t skipped = 0;
    if (skip != 0) {
        parts_hi = skip;
        parts_lo = n - skip - 1;
        if (parts[0].empty() && --parts_hi != 0) return false;      // ^: requires ^::
        if (parts[n - 1].empty() && --parts_lo != 0) return false;  // :$ requires ::$
        if (parts_hi + parts_lo >= kHextets) return false;          // "::" stands for >= 1
        skipped = kHextets - (parts_hi + parts_lo);
    } else if (n != kHextets || parts[0].empty() || parts[n - 1].empty()) {
        return false;
    }

    // _parse_hextet: 1-4 hex digits (int("", 16) fails too).
    auto hextet = [](const Part& p) -> int {
        if (p.value >= 0) return p.value;
        if (p.text.empty() || p.text.size() > 4) return -1;
        int v = 0;
        for (char c : p.text) {
            int h = hex_value(static_cast<unsigned char>(c));
            if (h < 0) return -1;
            v = v * 16 + h;
        }
        return v;
    };
    std::array<int, kHextets> words{};
    std::size_t w = 0;
    for (std::size_t i = 0; i < parts_hi; ++i) {
        if ((words[w++] = hextet(parts[i])) < 0) return false;
    }
    w += skipped;
    for (std::size_t i = n - parts_lo; i < n; ++i) {
        if ((words[w++] = hextet(parts[i])) < 0) return false;
    }
    hi = lo = 0;
    for (int i = 0; i < 4; ++i) {
        hi = (hi << 16) | static_cast<std::uint64_t>(words[i]);
        lo = (lo << 16) | static_cast<std::uint64_t>(words[i + 4]);
    }
    return true;
}

// IPv6Address(str): no '/', then IPv6Address._split_scope_id (partition at the first '%'; the
// zone must be non-empty and hold no further '%').
std::optional<IpAddress> parse_ipv6(std::string_view s) {
    if (s.find('/') != std::string_view::npos) return std::nullopt;
    IpAddress a;
    a.version = 6;
    std::size_t pct = s.find('%');
    if (pct != std::string_view::npos) {
        a.scope_id = s.substr(pct + 1);
        if (a.scope_id.empty() || a.scope_id.find('%') != std::string_view::npos) {
            return std::nullopt;
        }
        s = s.substr(0, pct);
    }
    if (!parse_ipv6_int(s, a.hi, a.lo)) return std::nullopt;
    return a;
}

// _BaseNetwork._prefix_from_prefix_string: ASCII digits (leading zeros allowed), in range.
std::optional<int> prefix_from_digits(std::string_view s, int max_prefix) {
    if (!all_ascii_digits(s) || s.size() > kMaxIntDigits) return std::nullopt;
    while (s.size() > 1 && s[0] == '0')
        s.remove_prefix(1);
    if (s.size() > 3) return std::nullopt;
    int v = 0;
    for (char c : s)
        v = v * 10 + (c - '0');
    if (v > max_prefix) return std::nullopt;
    return v;
}

// _BaseNetwork._prefix_from_ip_int: ones then zeros.
std::optional<int> prefix_from_mask(std::uint32_t mask) {
    int zeros = mask == 0 ? 32 : std::countr_zero(mask);
    int prefix = 32 - zeros;
    std::uint64_t leading = zeros == 32 ? 0 : (mask >> zeros);
    if (leading != (std::uint64_t{1} << prefix) - 1) return std::nullopt;
    return prefix;
}

// IPv4Network._make_netmask: a prefix length, else a dotted netmask, else a dotted hostmask.
std::optional<int> ipv4_prefix(std::string_view s) {
    if (auto p = prefix_from_digits(s, 32)) return p;
    auto mask = parse_ipv4(s);
    if (!mask) return std::nullopt;
    if (auto p = prefix_from_mask(*mask)) return p;
    return prefix_from_mask(~*mask);
}

// The 128-bit mask of a prefix, as (hi, lo); IPv4 uses the low 32 bits of lo.
void prefix_mask(int version, int prefix, std::uint64_t& hi, std::uint64_t& lo) {
    auto ones = [](int bits) -> std::uint64_t {  // `bits` leading ones in 64 bits
        return bits <= 0 ? 0 : bits >= 64 ? ~std::uint64_t{0} : ~std::uint64_t{0} << (64 - bits);
    };
    if (version == 4) {
        hi = 0;
        lo = prefix == 0 ? 0 : (0xFFFFFFFFull << (32 - prefix)) & 0xFFFFFFFFull;
        return;
    }
    hi = ones(prefix);
    lo = ones(prefix - 64);
}

// int() accepts digits with single underscores between them.
bool digits_with_underscores(std::string_view s, std::size_t& digits) {
    digits = 0;
    bool prev_underscore = true;  // also: no leading underscore
    for (char c : s) {
        if (c == '_') {
            if (prev_underscore) return false;
            prev_underscore = true;
        } else if (is_ascii_digit(static_cast<unsigned char>(c))) {
            prev_underscore = false;
            ++digits;
        } else {
            return false;
        }
    }
    return digits > 0 && !prev_underscore;
}

struct HostPort {
    std::string_view host;
    std::string_view port;  // empty: port 0
};

// Uvicorn's _parse_host_port.
HostPort parse_host_port(std::string_view value) {
    if (!value.empty() && value.front() == '[') {
        std::size_t end = value.find(']');
        if (end == std::string_view::npos) return {value, {}};
        std::string_view host = value.substr(1, end - 1);
        std::string_view rest = value.substr(end + 1);
        if (rest.empty()) return {host, {}};
        if (rest.front() != ':') return {value, {}};
        rest.remove_prefix(1);
        return {host, python_int(rest, nullptr) ? rest : std::string_view{}};
    }
    std::size_t colon = value.find(':');
    if (colon != std::string_view::npos && value.find(':', colon + 1) == std::string_view::npos) {
        std::string_view port = value.substr(colon + 1);
        if (python_int(port, nullptr)) return {value.substr(0, colon), port};
    }
    return {value, {}};
}

ForwardedValues make_client(const HostPort& hop) {
    ForwardedValues out;
    if (hop.host.empty()) return out;  // uvicorn#1068: an empty header names no client
    out.has_client = true;
    out.client_host.assign(hop.host);
    if (hop.port.empty() || !python_int(hop.port, &out.client_port)) out.client_port = "0";
    return out;
}

}  // namespace

std::optional<IpAddress> parse_ip_address(std::string_view text) {
    // ipaddress.ip_address: IPv4Address first, then IPv6Address.
    if (auto v4 = parse_ipv4(text)) {
        IpAddress a;
        a.lo = *v4;
        return a;
    }
    return parse_ipv6(text);
}

std::optional<IpNetwork> parse_ip_network(std::string_view text) {
    // _split_optional_netmask: at most one '/'; without one the prefix is the full length.
    std::size_t slash = text.find('/');
    if (slash != std::string_view::npos && text.find('/', slash + 1) != std::string_view::npos) {
        return std::nullopt;
    }
    std::string_view addr_text = text.substr(0, slash);
    std::optional<std::string_view> mask_text;
    if (slash != std::string_view::npos) mask_text = text.substr(slash + 1);

    IpNetwork net;
    std::optional<int> prefix;
    if (auto v4 = parse_ipv4(addr_text)) {
        net.version = 4;
        net.lo = *v4;
        prefix = mask_text ? ipv4_prefix(*mask_text) : 32;
    }
    if (!prefix) {  // not IPv4 (address or mask): IPv6Network
        auto v6 = parse_ipv6(addr_text);
        if (!v6) return std::nullopt;
        net = IpNetwork{6, v6->hi, v6->lo, 0};
        prefix = mask_text ? prefix_from_digits(*mask_text, 128) : 128;
        if (!prefix) return std::nullopt;
    }
    net.prefix = *prefix;
    std::uint64_t mhi = 0;
    std::uint64_t mlo = 0;
    prefix_mask(net.version, net.prefix, mhi, mlo);
    if ((net.hi & mhi) != net.hi || (net.lo & mlo) != net.lo) return std::nullopt;  // host bits
    return net;
}

bool network_contains(const IpNetwork& network, const IpAddress& address) {
    if (network.version != address.version) return false;
    std::uint64_t mhi = 0;
    std::uint64_t mlo = 0;
    prefix_mask(network.version, network.prefix, mhi, mlo);
    return (address.hi & mhi) == network.hi && (address.lo & mlo) == network.lo;
}

std::string_view python_strip(std::string_view text) {
    while (!text.empty() && is_python_space(static_cast<unsigned char>(text.front())))
        text.remove_prefix(1);
    while (!text.empty() && is_python_space(static_cast<unsigned char>(text.back())))
        text.remove_suffix(1);
    return text;
}

bool python_int(std::string_view text, std::string* canonical) {
    // PyLong_FromUnicodeObject: whitespace, an optional sign, digits with single underscores
    // between them, whitespace; nothing else (a NUL or \x7f included).
    while (!text.empty() && is_int_space(static_cast<unsigned char>(text.front())))
        text.remove_prefix(1);
    while (!text.empty() && is_int_space(static_cast<unsigned char>(text.back())))
        text.remove_suffix(1);
    bool negative = false;
    if (!text.empty() && (text.front() == '+' || text.front() == '-')) {
        negative = text.front() == '-';
        text.remove_prefix(1);
    }
    std::size_t digits = 0;
    if (!digits_with_underscores(text, digits) || digits > kMaxIntDigits) return false;
    if (canonical != nullptr) {
        canonical->clear();
        for (char c : text) {
            if (c == '_' || (c == '0' && canonical->empty())) continue;
            canonical->push_back(c);
        }
        if (canonical->empty()) {
            canonical->push_back('0');
        } else if (negative) {
            canonical->insert(canonical->begin(), '-');
        }
    }
    return true;
}

TrustedHosts::TrustedHosts(bool trust_all, const std::vector<std::string>& entries)
    : trust_all_(trust_all) {
    if (trust_all_) return;  // Uvicorn does not even read the entries then
    for (const std::string& entry : entries) {
        // "/" looks like a network; anything that does not parse is kept as a literal.
        if (entry.find('/') != std::string::npos) {
            if (auto net = parse_ip_network(entry)) {
                networks_.push_back(*net);
                continue;
            }
        } else if (auto addr = parse_ip_address(entry)) {
            addresses_.push_back({addr->version, addr->hi, addr->lo, std::string(addr->scope_id)});
            continue;
        }
        literals_.push_back(entry);
    }
}

TrustedHosts TrustedHosts::parse(std::string_view value) {
    if (value == "*") return TrustedHosts(true, {});
    std::vector<std::string> entries;
    while (true) {
        std::size_t comma = value.find(',');
        entries.emplace_back(python_strip(value.substr(0, comma)));
        if (comma == std::string_view::npos) break;
        value.remove_prefix(comma + 1);
    }
    return TrustedHosts(false, entries);
}

bool TrustedHosts::contains(std::string_view host) const {
    if (trust_all_) return true;
    if (host.empty()) return false;
    if (auto ip = parse_ip_address(host)) {
        for (const Address& a : addresses_) {
            if (a.version == ip->version && a.hi == ip->hi && a.lo == ip->lo &&
                a.scope_id == ip->scope_id) {
                return true;
            }
        }
        return std::any_of(networks_.begin(), networks_.end(),
                           [&](const IpNetwork& n) { return network_contains(n, *ip); });
    }
    return std::find(literals_.begin(), literals_.end(), host) != literals_.end();
}

ForwardedValues read_forwarded_headers(const TrustedHosts& trusted, std::span<const Header> headers,
                                       bool websocket) {
    constexpr std::string_view kFor = "x-forwarded-for";
    const Header* proto = nullptr;
    std::size_t first_for = headers.size();
    std::size_t last_for = 0;
    for (std::size_t i = 0; i < headers.size(); ++i) {
        if (headers[i].name == "x-forwarded-proto") {
            proto = &headers[i];
        } else if (headers[i].name == kFor) {
            if (first_for == headers.size()) first_for = i;
            last_for = i;
        }
    }

    ForwardedValues out;
    if (first_for < headers.size()) {
        // The values joined with ", " and split at commas are the values' own comma-separated
        // items, in order (the joining space is stripped with the item). So walk the items of
        // each value right to left, from the last value to the first: no join, no copy.
        bool found = false;
        for (std::size_t i = last_for + 1; i-- > first_for && !found && !trusted.trust_all();) {
            if (headers[i].name != kFor) continue;
            std::string_view v = headers[i].value;
            while (true) {
                std::size_t comma = v.rfind(',');
                std::string_view item = comma == std::string_view::npos ? v : v.substr(comma + 1);
                HostPort hop = parse_host_port(python_strip(item));
                if (!trusted.contains(hop.host)) {
                    out = make_client(hop);
                    found = true;
                    break;
                }
                if (comma == std::string_view::npos) break;
                v = v.substr(0, comma);
            }
        }
        // Under "*", or when every hop is a trusted proxy (uvicorn#1068): the left-most hop.
        if (!found) {
            std::string_view first = headers[first_for].value;
            out = make_client(parse_host_port(python_strip(first.substr(0, first.find(',')))));
        }
    }
    if (proto != nullptr) {
        std::string_view p = python_strip(proto->value);
        if (p == "http" || p == "ws") {
            out.scheme = websocket ? "ws" : (p == "http" ? "http" : "ws");
        } else if (p == "https" || p == "wss") {
            out.scheme = websocket ? "wss" : (p == "https" ? "https" : "wss");
        }
    }
    return out;
}

}  // namespace cppuvicorn::core
