// SPDX-License-Identifier: BSD-3-Clause
// Proxy headers (X-Forwarded-For, X-Forwarded-Proto) with Uvicorn's rules
// (uvicorn/middleware/proxy_headers.py), and the parts of Python's `ipaddress` and `int()` those
// rules rely on, so that the same --forwarded-allow-ips trusts the same hops and yields the same
// client. Strings are bytes standing for the Latin-1 text Uvicorn decodes. No Python, no I/O.
#pragma once

#include "core/request_handler.hpp"

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace cppuvicorn::core {

// An address as Python's ipaddress.ip_address(str) reads it.
struct IpAddress {
    int version = 4;
    std::uint64_t hi = 0;       // IPv6: the upper 64 bits; IPv4: 0
    std::uint64_t lo = 0;       // IPv6: the lower 64 bits; IPv4: the address
    std::string_view scope_id;  // IPv6 zone ("eth0" of "fe80::1%eth0"), borrowed from the text;
                                // empty: none
};

// A network as Python's ipaddress.ip_network(str) reads it (strict: host bits set is an error).
struct IpNetwork {
    int version = 4;
    std::uint64_t hi = 0;
    std::uint64_t lo = 0;
    int prefix = 0;
};

// nullopt wherever Python raises ValueError. IPv4: four decimal octets without leading zeros;
// IPv6: RFC 4291 text with at most one "::", an optional dotted IPv4 tail and an optional
// "%zone".
std::optional<IpAddress> parse_ip_address(std::string_view text);
// "addr/prefix", or for IPv4 also "addr/netmask" and "addr/hostmask".
std::optional<IpNetwork> parse_ip_network(std::string_view text);
// Python's `address in network`: same version and prefix bits; the zone id is ignored.
bool network_contains(const IpNetwork& network, const IpAddress& address);

// str.strip() of the Latin-1 text (whitespace: \t \n \v \f \r, \x1c-\x1f, space, \x85, \xa0).
std::string_view python_strip(std::string_view text);
// Python's int(text) of the Latin-1 text: false where it raises ValueError (including more
// than 4300 digits, sys.int_info's default limit). On success `canonical`, when given, is the
// value in decimal: "-" only for negative values, no leading zeros ("0", "8080", "-5").
bool python_int(std::string_view text, std::string* canonical);

// The set behind --forwarded-allow-ips (Uvicorn's _TrustedHosts): IP addresses, networks,
// literals (anything else, e.g. a UNIX socket name), or "*" for everything. Built once at
// start-up; contains() is const and allocation-free.
class TrustedHosts {
  public:
    TrustedHosts() = default;  // trusts nothing
    // Uvicorn's list form: entries are used as given (not stripped); trust_all is Uvicorn's
    // `value in ("*", ["*"])`, decided by the caller for the form it was given.
    TrustedHosts(bool trust_all, const std::vector<std::string>& entries);
    // Uvicorn's string form: "127.0.0.1, ::1, 10.0.0.0/8", split at commas, each stripped;
    // exactly "*" trusts everything.
    static TrustedHosts parse(std::string_view value);

    bool trust_all() const { return trust_all_; }
    // Uvicorn's `host in trusted_hosts`: a host that reads as an IP address is matched against
    // the addresses (zone id included) and networks, anything else against the literals. An
    // empty host (also: a peer without an address, on a UNIX socket) is trusted only under "*".
    bool contains(std::string_view host) const;

  private:
    struct Address {
        int version;
        std::uint64_t hi;
        std::uint64_t lo;
        std::string scope_id;
    };
    bool trust_all_ = false;
    std::vector<Address> addresses_;
    std::vector<IpNetwork> networks_;
    std::vector<std::string> literals_;
};

// What a trusted proxy's headers change in the request's scope.
struct ForwardedValues {
    // "http", "https", "ws" or "wss" (static storage); empty: the scheme is unchanged.
    std::string_view scheme;
    bool has_client = false;  // false: the client is unchanged
    std::string client_host;  // the hop's host, bytes as received (Latin-1 text)
    std::string client_port;  // decimal (python_int's canonical form), "0" when none was given
};

// Uvicorn's ProxyHeadersMiddleware for one request whose peer `trusted` contains (check that
// once per connection: nothing here looks at the peer). `headers` are the request's, names
// lowercased. The last X-Forwarded-Proto, stripped, counts if it is http, https, ws or wss,
// spelled ws/wss for a WebSocket. All X-Forwarded-For values, in order, form one list of
// comma-separated hops; walking it from the right, the first hop whose host is not trusted is
// the client (the left-most hop if every one is, and that one at once under "*"). A hop is
// "host", "host:port" or "[v6]:port"; a port that int() refuses leaves the hop whole (or just
// the bracketed host) with port 0. An empty host changes nothing (uvicorn#1068).
ForwardedValues read_forwarded_headers(const TrustedHosts& trusted, std::span<const Header> headers,
                                       bool websocket);

}  // namespace cppuvicorn::core
