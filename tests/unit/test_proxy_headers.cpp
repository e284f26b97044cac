// SPDX-License-Identifier: BSD-3-Clause
// Proxy headers: Python's ipaddress/int() parsing and Uvicorn's trust and X-Forwarded-* rules.
// Expected values were checked against CPython 3.11's ipaddress and Uvicorn's
// ProxyHeadersMiddleware; tests/e2e/test_proxy_headers.py compares the two on random inputs.
#include "core/proxy_headers.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace cppuvicorn::core;

std::string show(const std::optional<IpAddress>& a) {
    if (!a) return "invalid";
    char buf[96];
    std::snprintf(buf, sizeof buf, "v%d %016llx%016llx", a->version,
                  static_cast<unsigned long long>(a->hi), static_cast<unsigned long long>(a->lo));
    std::string out = buf;
    if (!a->scope_id.empty()) out += "%" + std::string(a->scope_id);
    return out;
}

std::string show(const std::optional<IpNetwork>& n) {
    if (!n) return "invalid";
    char buf[96];
    std::snprintf(buf, sizeof buf, "v%d %016llx%016llx/%d", n->version,
                  static_cast<unsigned long long>(n->hi), static_cast<unsigned long long>(n->lo),
                  n->prefix);
    return buf;
}

// "scheme client_host:client_port" of the result; "-" for what is unchanged.
std::string forwarded(const TrustedHosts& trusted, std::vector<Header> headers,
                      bool websocket = false) {
    ForwardedValues v = read_forwarded_headers(trusted, headers, websocket);
    std::string out = v.scheme.empty() ? "-" : std::string(v.scheme);
    out += " ";
    out += v.has_client ? v.client_host + ":" + v.client_port : "-";
    return out;
}

std::vector<Header> xff(std::string_view value) {
    return {{"x-forwarded-for", value}};
}

}  // namespace

TEST_CASE("parse_ip_address: IPv4 is four decimal octets, without leading zeros",
          "[proxy_headers]") {
    CHECK(show(parse_ip_address("127.0.0.1")) == "v4 0000000000000000000000007f000001");
    CHECK(show(parse_ip_address("0.0.0.0")) == "v4 00000000000000000000000000000000");
    CHECK(show(parse_ip_address("255.255.255.255")) == "v4 000000000000000000000000ffffffff");
    for (std::string_view bad :
         {"", "1.2.3", "1.2.3.4.5", "01.2.3.4", "1.2.3.256", "1.2.3.1000", "1..3.4", "1.2.3.4 ",
          " 1.2.3.4", "1.2.3.+4", "1.2.3.4/32", "1.2.3.4:80", "0x1.2.3.4", "1.2.3.٤"}) {
        CAPTURE(bad);
        CHECK_FALSE(parse_ip_address(bad));
    }
}

TEST_CASE("parse_ip_address: IPv6 text forms, IPv4 tails and zones", "[proxy_headers]") {
    CHECK(show(parse_ip_address("::1")) == "v6 00000000000000000000000000000001");
    CHECK(show(parse_ip_address("::")) == "v6 00000000000000000000000000000000");
    CHECK(show(parse_ip_address("1::")) == "v6 00010000000000000000000000000000");
    CHECK(show(parse_ip_address("2001:DB8::ff00:42:8329")) ==
          "v6 20010db8000000000000ff0000428329");
    CHECK(show(parse_ip_address("1:2:3:4:5:6:7:8")) == "v6 00010002000300040005000600070008");
    CHECK(show(parse_ip_address("::ffff:127.0.0.1")) == "v6 00000000000000000000ffff7f000001");
    CHECK(show(parse_ip_address("1:2:3:4:5:6:1.2.3.4")) == "v6 00010002000300040005000601020304");
    CHECK(show(parse_ip_address("fe80::1%eth0")) == "v6 fe800000000000000000000000000001%eth0");
    CHECK(show(parse_ip_address("::1%a:b")) == "v6 00000000000000000000000000000001%a:b");
    CHECK(show(parse_ip_address("0001:02:3::")) == "v6 00010002000300000000000000000000");
    for (std::string_view bad : {":",
                                 ":::",
                                 "1:2",
                                 "1:2:3:4:5:6:7",
                                 "1:2:3:4:5:6:7:8:9",
                                 "1::2::3",
                                 ":1::",
                                 "::1:",
                                 "1:2:3:4:5:6:7::8",
                                 "1:2:3:4::5:6:7:8",
                                 "12345::",
                                 "g::",
                                 "::1%",
                                 "::1%a%b",
                                 "%eth0",
                                 "::1/128",
                                 "::1.2.3",
                                 "::01.2.3.4",
                                 "1.2.3.4::",
                                 "::1.2.3.4:5",
                                 "1:2:3:4:5:6:7:1.2.3.4",
                                 "[::1]",
                                 "::1 "}) {
        CAPTURE(bad);
        CHECK_FALSE(parse_ip_address(bad));
    }
}

TEST_CASE("parse_ip_network: prefixes, IPv4 net- and hostmasks, strict host bits",
          "[proxy_headers]") {
    CHECK(show(parse_ip_network("10.0.0.0/8")) == "v4 0000000000000000000000000a000000/8");
    CHECK(show(parse_ip_network("10.0.0.0/008")) == "v4 0000000000000000000000000a000000/8");
    CHECK(show(parse_ip_network("10.0.0.0/255.0.0.0")) == "v4 0000000000000000000000000a000000/8");
    CHECK(show(parse_ip_network("10.0.0.0/0.255.255.255")) ==
          "v4 0000000000000000000000000a000000/8");
    CHECK(show(parse_ip_network("0.0.0.0/0")) == "v4 00000000000000000000000000000000/0");
    CHECK(show(parse_ip_network("0.0.0.0/0.0.0.0")) == "v4 00000000000000000000000000000000/0");
    CHECK(show(parse_ip_network("1.2.3.4/32")) == "v4 00000000000000000000000001020304/32");
    CHECK(show(parse_ip_network("1.2.3.4")) == "v4 00000000000000000000000001020304/32");
    CHECK(show(parse_ip_network("::/0")) == "v6 00000000000000000000000000000000/0");
    CHECK(show(parse_ip_network("fe80::%eth0/64")) == "v6 fe800000000000000000000000000000/64");
    CHECK(show(parse_ip_network("2001:db8::/32")) == "v6 20010db8000000000000000000000000/32");
    CHECK(show(parse_ip_network("::1/128")) == "v6 00000000000000000000000000000001/128");
    for (std::string_view bad : {"10.0.0.1/8", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/+8",
                                 "10.0.0.0/ 8", "10.0.0.0/255.0.255.0", "10.0.0.0/8/8", "/8",
                                 "::1/64", "::/129", "::/255.0.0.0", "2001:db8::/٣٢", "abc/8"}) {
        CAPTURE(bad);
        CHECK_FALSE(parse_ip_network(bad));
    }
}

TEST_CASE("network_contains: same version and prefix bits, zone ignored", "[proxy_headers]") {
    auto net = *parse_ip_network("10.0.0.0/8");
    CHECK(network_contains(net, *parse_ip_address("10.255.0.1")));
    CHECK_FALSE(network_contains(net, *parse_ip_address("11.0.0.0")));
    CHECK_FALSE(network_contains(net, *parse_ip_address("::ffff:10.0.0.1")));  // v6, not v4
    auto v6 = *parse_ip_network("fe80::/64");
    CHECK(network_contains(v6, *parse_ip_address("fe80::1%eth0")));
    CHECK_FALSE(network_contains(v6, *parse_ip_address("fe80:0:0:1::1")));
    CHECK(network_contains(*parse_ip_network("::/0"), *parse_ip_address("::1")));
    CHECK_FALSE(network_contains(*parse_ip_network("::/0"), *parse_ip_address("1.2.3.4")));
    CHECK(network_contains(*parse_ip_network("0.0.0.0/0"), *parse_ip_address("1.2.3.4")));
}

TEST_CASE("python_int: int()'s grammar over Latin-1 text", "[proxy_headers]") {
    auto canon = [](std::string_view s) {
        std::string out;
        return python_int(s, &out) ? out : std::string("ValueError");
    };
    CHECK(canon("8080") == "8080");
    CHECK(canon("0") == "0");
    CHECK(canon("-0") == "0");
    CHECK(canon("007") == "7");
    CHECK(canon("+5") == "5");
    CHECK(canon("-5") == "-5");
    CHECK(canon("1_000") == "1000");
    CHECK(canon(" \t8\r\n") == "8");
    CHECK(canon("\xa0"
                "8\x85") == "8");  // Latin-1 NBSP and NEL are whitespace to int()
    CHECK(canon("99999999999999999999999") == "99999999999999999999999");
    CHECK(canon(std::string(4300, '1')) == std::string(4300, '1'));
    for (std::string_view bad : {"", " ", "-", "+-1", "- 1", "_1", "1_", "1__0", "0x10", "1.0",
                                 "\x1c"
                                 "1",
                                 "1\x7f", "١", "8 0"}) {
        CAPTURE(bad);
        CHECK(canon(bad) == "ValueError");
    }
    CHECK(canon(std::string(4301, '1')) == "ValueError");  // sys.int_info.default_max_str_digits
    CHECK(canon(std::string(4301, '0')) == "ValueError");  // leading zeros count too
    CHECK(canon(std::string("1\0", 2)) == "ValueError");
}

TEST_CASE("python_strip: str.strip() whitespace over Latin-1", "[proxy_headers]") {
    CHECK(python_strip(" \t\x0b\x0c\r\n\x1c\x1d\x1e\x1f\x85\xa0"
                       "a b\xa0 ") == "a b");
    CHECK(python_strip("\x7f"
                       "a") ==
          "\x7f"
          "a");
    CHECK(python_strip("   ").empty());
}

TEST_CASE("TrustedHosts: addresses, networks, literals and '*'", "[proxy_headers]") {
    SECTION("Uvicorn's default") {
        auto t = TrustedHosts::parse("127.0.0.1,::1");
        CHECK(t.contains("127.0.0.1"));
        CHECK(t.contains("::1"));
        CHECK(t.contains("0:0:0:0:0:0:0:1"));  // compared as addresses, not text
        CHECK_FALSE(t.contains("127.0.0.2"));
        CHECK_FALSE(t.contains("::ffff:127.0.0.1"));
        CHECK_FALSE(t.contains("::1%lo"));  // a zone makes a different address
        CHECK_FALSE(t.contains(""));        // no address (UNIX socket peer)
        CHECK_FALSE(t.trust_all());
    }
    SECTION("entries are stripped; networks; literals match exactly") {
        auto t = TrustedHosts::parse(" 10.0.0.0/8 , fe80::/10,\tproxy.sock ,10.0.0.1/8, 1.2.3");
        CHECK(t.contains("10.1.2.3"));
        CHECK(t.contains("fe80::1234%eth0"));
        CHECK(t.contains("proxy.sock"));
        CHECK_FALSE(t.contains("Proxy.sock"));
        CHECK(t.contains("10.0.0.1/8"));  // host bits set: kept as a literal
        CHECK(t.contains("1.2.3"));       // not an address: a literal
        CHECK_FALSE(t.contains("11.0.0.1"));
    }
    SECTION("a literal never matches something that reads as an address") {
        // Uvicorn: an IP is looked up among addresses and networks only.
        auto t = TrustedHosts(false, {"1.2.3.4 ", "::1%"});
        CHECK(t.contains("1.2.3.4 "));  // the list form is not stripped; " " makes it a literal
        CHECK_FALSE(t.contains("1.2.3.4"));
        CHECK(t.contains("::1%"));
    }
    SECTION("'*' trusts everything, also a peer without address") {
        auto t = TrustedHosts::parse("*");
        CHECK(t.trust_all());
        CHECK(t.contains(""));
        CHECK(t.contains("anything"));
        // Only exactly "*": in a list with others it is a literal.
        auto u = TrustedHosts::parse("*,10.0.0.1");
        CHECK_FALSE(u.trust_all());
        CHECK(u.contains("*"));
        CHECK_FALSE(u.contains("10.0.0.2"));
        CHECK_FALSE(TrustedHosts::parse(" *").trust_all());
    }
    SECTION("an empty value trusts nothing") {
        auto t = TrustedHosts::parse("");
        CHECK_FALSE(t.contains(""));
        CHECK_FALSE(t.contains("127.0.0.1"));
    }
}

TEST_CASE("read_forwarded_headers: X-Forwarded-For walked right to left", "[proxy_headers]") {
    auto local = TrustedHosts::parse("127.0.0.1, 10.0.0.0/8");
    CHECK(forwarded(local, {}) == "- -");
    CHECK(forwarded(local, xff("1.2.3.4")) == "- 1.2.3.4:0");
    CHECK(forwarded(local, xff("1.2.3.4, 10.0.0.1, 10.0.0.2")) == "- 1.2.3.4:0");
    CHECK(forwarded(local, xff("9.9.9.9, 1.2.3.4, 10.0.0.2")) == "- 1.2.3.4:0");
    // Every hop trusted: the left-most one (uvicorn#1068).
    CHECK(forwarded(local, xff("10.0.0.3, 127.0.0.1")) == "- 10.0.0.3:0");
    // Ports: IPv4 host:port and [v6]:port keep theirs; a bare v6 address has none.
    CHECK(forwarded(local, xff("1.2.3.4:5678")) == "- 1.2.3.4:5678");
    CHECK(forwarded(local, xff("[2001:db8::1]:443")) == "- 2001:db8::1:443");
    CHECK(forwarded(local, xff("[2001:db8::1]")) == "- 2001:db8::1:0");
    CHECK(forwarded(local, xff("2001:db8::1")) == "- 2001:db8::1:0");
    CHECK(forwarded(local, xff("10.0.0.1:80, 127.0.0.1:1")) == "- 10.0.0.1:80");
    // Malformed ports: the hop stays whole (or keeps just the bracketed host), port 0.
    CHECK(forwarded(local, xff("1.2.3.4:http")) == "- 1.2.3.4:http:0");
    CHECK(forwarded(local, xff("[::1]:x")) == "- ::1:0");
    CHECK(forwarded(local, xff("[::1]x")) == "- [::1]x:0");
    CHECK(forwarded(local, xff("[::1")) == "- [::1:0");
    CHECK(forwarded(local, xff("1.2.3.4: 0080 ")) == "- 1.2.3.4:80");
    CHECK(forwarded(local, xff("h:-1_0")) == "- h:-10");
    CHECK(forwarded(local, xff("h:123456789012345678901234567890")) ==
          "- h:123456789012345678901234567890");
    // Non-IP hops are hosts too (and may match a literal).
    CHECK(forwarded(local, xff("unknown, 10.0.0.1")) == "- unknown:0");
    // An empty header, or an empty right-most hop, changes nothing.
    CHECK(forwarded(local, xff("")) == "- -");
    CHECK(forwarded(local, xff("1.2.3.4,")) == "- -");
    CHECK(forwarded(local, xff("1.2.3.4, :80")) == "- -");
    CHECK(forwarded(local, xff("[]:80")) == "- -");
}

TEST_CASE("read_forwarded_headers: several X-Forwarded-For lines form one list",
          "[proxy_headers]") {
    auto local = TrustedHosts::parse("127.0.0.1, 10.0.0.0/8");
    std::vector<Header> h{{"x-forwarded-for", "1.1.1.1, 2.2.2.2"},
                          {"host", "x"},
                          {"x-forwarded-for", "10.0.0.1"},
                          {"x-forwarded-for", " 10.0.0.2 "}};
    CHECK(forwarded(local, h) == "- 2.2.2.2:0");
    std::vector<Header> all_trusted{{"x-forwarded-for", "10.0.0.9 ,10.0.0.1"},
                                    {"x-forwarded-for", "127.0.0.1"}};
    CHECK(forwarded(local, all_trusted) == "- 10.0.0.9:0");
    // "a," then "b" joins to "a,, b": the empty item in between is a hop that is not trusted.
    std::vector<Header> gap{{"x-forwarded-for", "1.1.1.1,"}, {"x-forwarded-for", "10.0.0.1"}};
    CHECK(forwarded(local, gap) == "- -");
}

TEST_CASE("read_forwarded_headers: '*' takes the left-most hop at once", "[proxy_headers]") {
    auto all = TrustedHosts::parse("*");
    CHECK(forwarded(all, xff("1.1.1.1:1, 2.2.2.2, 3.3.3.3")) == "- 1.1.1.1:1");
    CHECK(forwarded(all, {{"x-forwarded-for", " [::1]:2 "}, {"x-forwarded-for", "9.9.9.9"}}) ==
          "- ::1:2");
    CHECK(forwarded(all, xff(", 1.1.1.1")) == "- -");
}

TEST_CASE("read_forwarded_headers: X-Forwarded-Proto", "[proxy_headers]") {
    auto t = TrustedHosts::parse("127.0.0.1");
    auto proto = [&](std::string_view v, bool ws = false) {
        return forwarded(t, {{"x-forwarded-proto", v}}, ws);
    };
    CHECK(proto("https") == "https -");
    CHECK(proto(" http\t") == "http -");
    CHECK(proto("wss") == "wss -");  // an HTTP scope takes ws/wss as given, as Uvicorn does
    CHECK(proto("ws") == "ws -");
    CHECK(proto("https", true) == "wss -");
    CHECK(proto("http", true) == "ws -");
    CHECK(proto("wss", true) == "wss -");
    CHECK(proto("ws", true) == "ws -");
    for (std::string_view bad : {"HTTPS", "ftp", "", "https,http", "https:", "h ttps"}) {
        CAPTURE(bad);
        CHECK(proto(bad) == "- -");
    }
    // The last header wins, even when it is not a valid value.
    CHECK(forwarded(t, {{"x-forwarded-proto", "https"}, {"x-forwarded-proto", "http"}}) ==
          "http -");
    CHECK(forwarded(t, {{"x-forwarded-proto", "https"}, {"x-forwarded-proto", "bogus"}}) == "- -");
    // Both headers at once.
    CHECK(forwarded(t, {{"x-forwarded-proto", "https"}, {"x-forwarded-for", "1.2.3.4:1"}}) ==
          "https 1.2.3.4:1");
}
