// SPDX-License-Identifier: BSD-3-Clause
// libFuzzer target: proxy headers (core/proxy_headers.hpp) on arbitrary trust lists and headers.
//
// Input layout (see make_corpus.py): byte 0: bit 0 WebSocket scope, bit 1 the list form
// (entries used as given, not split or stripped). Then the --forwarded-allow-ips value up to the
// first '\n'; then one header per '\n'-separated line, its first byte choosing the name
// (% 4: x-forwarded-for, x-forwarded-proto, X-Forwarded-For in the wrong case, another header),
// the rest the value.
//
// Checked: read_forwarded_headers() gives what a literal transcription of Uvicorn's middleware
// (join the values with ", ", split at commas, strip, walk right to left) gives; the scheme is
// one of the four names (ws/wss for a WebSocket); a client has a non-empty host taken from an
// X-Forwarded-For value and a canonical port; an address or network that parses re-parses from
// its canonical text to the same value, and a network contains its own address; python_int's
// canonical form is a fixed point.
#include "core/proxy_headers.hpp"

#include "tests/fuzz/fuzz_check.hpp"
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace cppuvicorn::core;

std::vector<std::string_view> split(std::string_view s, char sep) {
    std::vector<std::string_view> out;
    while (true) {
        std::size_t at = s.find(sep);
        out.push_back(s.substr(0, at));
        if (at == std::string_view::npos) return out;
        s.remove_prefix(at + 1);
    }
}

// Uvicorn's _parse_host_port, transcribed with copies.
std::pair<std::string, std::string> reference_host_port(const std::string& value) {
    if (!value.empty() && value[0] == '[') {
        std::size_t end = value.find(']');
        if (end == std::string::npos) return {value, "0"};
        std::string host = value.substr(1, end - 1);
        std::string rest = value.substr(end + 1);
        if (rest.empty()) return {host, "0"};
        if (rest[0] != ':') return {value, "0"};
        std::string port;
        if (python_int(rest.substr(1), &port)) return {host, port};
        return {host, "0"};
    }
    std::size_t colons = 0;
    for (char c : value)
        colons += c == ':';
    if (colons == 1) {
        std::size_t at = value.rfind(':');
        std::string port;
        if (python_int(value.substr(at + 1), &port)) return {value.substr(0, at), port};
    }
    return {value, "0"};
}

// ProxyHeadersMiddleware.__call__ after the peer check, transcribed with copies.
ForwardedValues reference(const TrustedHosts& trusted, const std::vector<Header>& headers,
                          bool websocket) {
    ForwardedValues out;
    const Header* proto = nullptr;
    std::vector<std::string_view> values;
    for (const Header& h : headers) {
        if (h.name == "x-forwarded-proto") proto = &h;
        if (h.name == "x-forwarded-for") values.push_back(h.value);
    }
    if (proto != nullptr) {
        std::string p(python_strip(proto->value));
        if (p == "http" || p == "https" || p == "ws" || p == "wss") {
            if (websocket) {
                out.scheme = p == "http" || p == "ws" ? "ws" : "wss";
            } else {
                out.scheme = p == "http"    ? "http"
                             : p == "https" ? "https"
                             : p == "ws"    ? "ws"
                                            : "wss";
            }
        }
    }
    if (!values.empty()) {
        std::string joined;
        for (std::size_t i = 0; i < values.size(); ++i) {
            if (i > 0) joined += ", ";
            joined += values[i];
        }
        std::vector<std::string> hops;
        for (std::string_view item : split(joined, ','))
            hops.emplace_back(python_strip(item));
        std::pair<std::string, std::string> chosen = reference_host_port(hops[0]);
        if (!trusted.trust_all()) {
            for (std::size_t i = hops.size(); i-- > 0;) {
                auto hp = reference_host_port(hops[i]);
                if (!trusted.contains(hp.first)) {
                    chosen = hp;
                    break;
                }
            }
        }
        if (!chosen.first.empty()) {
            out.has_client = true;
            out.client_host = chosen.first;
            out.client_port = chosen.second;
        }
    }
    return out;
}

std::string format_address(const IpAddress& a) {
    char buf[64];
    if (a.version == 4) {
        std::snprintf(buf, sizeof buf, "%u.%u.%u.%u", unsigned(a.lo >> 24) & 255,
                      unsigned(a.lo >> 16) & 255, unsigned(a.lo >> 8) & 255, unsigned(a.lo) & 255);
        return buf;
    }
    std::snprintf(buf, sizeof buf, "%x:%x:%x:%x:%x:%x:%x:%x", unsigned(a.hi >> 48) & 0xFFFF,
                  unsigned(a.hi >> 32) & 0xFFFF, unsigned(a.hi >> 16) & 0xFFFF,
                  unsigned(a.hi) & 0xFFFF, unsigned(a.lo >> 48) & 0xFFFF,
                  unsigned(a.lo >> 32) & 0xFFFF, unsigned(a.lo >> 16) & 0xFFFF,
                  unsigned(a.lo) & 0xFFFF);
    std::string out = buf;
    if (!a.scope_id.empty()) out += "%" + std::string(a.scope_id);
    return out;
}

void check_address_round_trip(std::string_view text) {
    auto a = parse_ip_address(text);
    if (!a) return;
    std::string again = format_address(*a);
    auto b = parse_ip_address(again);
    FUZZ_CHECK(b && b->version == a->version && b->hi == a->hi && b->lo == a->lo &&
               b->scope_id == a->scope_id);
    FUZZ_CHECK(a->version == 6 || a->hi == 0);
    FUZZ_CHECK(a->version == 6 || a->lo <= 0xFFFFFFFFu);
}

void check_network(std::string_view text) {
    auto n = parse_ip_network(text);
    if (!n) return;
    FUZZ_CHECK(n->prefix >= 0 && n->prefix <= (n->version == 4 ? 32 : 128));
    IpAddress a{n->version, n->hi, n->lo, {}};
    FUZZ_CHECK(network_contains(*n, a));
    std::string canonical = format_address(a) + "/" + std::to_string(n->prefix);
    auto m = parse_ip_network(canonical);
    FUZZ_CHECK(m && m->version == n->version && m->hi == n->hi && m->lo == n->lo &&
               m->prefix == n->prefix);
}

bool is_canonical_int(std::string_view s) {
    if (s == "0") return true;
    if (!s.empty() && s[0] == '-') s.remove_prefix(1);
    if (s.empty() || s[0] == '0') return false;
    for (char c : s) {
        if (c < '0' || c > '9') return false;
    }
    return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    const bool websocket = (data[0] & 1) != 0;
    const bool list_form = (data[0] & 2) != 0;
    std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
    std::size_t nl = rest.find('\n');
    std::string_view spec = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);

    TrustedHosts trusted;
    if (list_form) {
        std::vector<std::string> entries;
        for (std::string_view e : split(spec, ','))
            entries.emplace_back(e);
        trusted = TrustedHosts(entries.size() == 1 && entries[0] == "*", entries);
    } else {
        trusted = TrustedHosts::parse(spec);
    }
    for (std::string_view e : split(spec, ',')) {
        check_address_round_trip(python_strip(e));
        check_network(python_strip(e));
    }

    static constexpr std::string_view kNames[] = {"x-forwarded-for", "x-forwarded-proto",
                                                  "X-Forwarded-For", "host"};
    std::vector<Header> headers;
    if (!rest.empty()) {
        for (std::string_view line : split(rest, '\n')) {
            if (line.empty()) continue;
            headers.push_back({kNames[static_cast<unsigned char>(line[0]) % 4], line.substr(1)});
        }
    }

    ForwardedValues got = read_forwarded_headers(trusted, headers, websocket);
    ForwardedValues want = reference(trusted, headers, websocket);
    FUZZ_CHECK(got.scheme == want.scheme);
    FUZZ_CHECK(got.has_client == want.has_client);
    FUZZ_CHECK(got.client_host == want.client_host);
    FUZZ_CHECK(got.client_port == want.client_port);

    FUZZ_CHECK(got.scheme.empty() || got.scheme == "ws" || got.scheme == "wss" ||
               (!websocket && (got.scheme == "http" || got.scheme == "https")));
    if (got.has_client) {
        FUZZ_CHECK(!got.client_host.empty());
        FUZZ_CHECK(is_canonical_int(got.client_port));
        bool inside = false;
        for (const Header& h : headers) {
            if (h.name == "x-forwarded-for" &&
                h.value.find(got.client_host) != std::string_view::npos) {
                inside = true;
            }
        }
        FUZZ_CHECK(inside);
        std::string again;
        FUZZ_CHECK(python_int(got.client_port, &again) && again == got.client_port);
    }
    for (const Header& h : headers) {
        for (std::string_view item : split(h.value, ',')) {
            std::string_view hop = python_strip(item);
            check_address_round_trip(hop);
            std::string canonical;
            if (python_int(hop, &canonical)) {
                FUZZ_CHECK(is_canonical_int(canonical));
            }
            // An address the list names is trusted (addresses compare as values).
            if (auto a = parse_ip_address(hop); a && !trusted.trust_all()) {
                TrustedHosts self(false, {std::string(hop)});
                FUZZ_CHECK(self.contains(format_address(*a)));
            }
        }
    }
    return 0;
}
