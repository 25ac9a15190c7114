"""IPv6 beside a GatewayLab's IPv4: a prefix from 2001:db8::/32 on the fiber and mobile paths, for tests.

The gateway's main table gets an IPv6 default route through each uplink, the fiber's preferred (as
router advertisements would leave them): a packet that leaves by the mobile uplink does so because
failoverd put it there, not because the main table would. Services on the internet side take
addresses from 2001:db8:ff::/48. The policy's fiber and mobile uplinks become dual-stack (next_hop6
and an IPv6 probe each), so failoverd compiles them into fiber, fiber/v6, mobile and mobile/v6: only
the /v6 twins carry IPv6 (policy/compile.py), and what goes to an IPv6 address goes over one of them.
"""

from __future__ import annotations

from netlab import GatewayLab

INTERNET6 = "2001:db8:ff::/48"
FIBER6 = "2001:db8:1::2"  # the gateway's address on the fiber link (2001:db8:1::1 is the ISP's router)
MOBILE6 = "2001:db8:2::2"
PROBE6 = "2001:db8:ff::1"  # the IPv6 probes' target (the internet side answers echo requests itself)
# The uplinks of netlab.POLICY made dual-stack: each keeps its IPv4 probes and gains one IPv6 probe,
# at its IPv4 probes' pace, so that its IPv6 twin is judged as quickly as the IPv4 one.
DUAL_STACK = (
    (
        "    next_hop: 198.18.1.1\n    probes:\n",
        '    next_hop: 198.18.1.1\n    next_hop6: "2001:db8:1::1"\n    probes:\n'
        f'      - {{kind: icmp, target: "{PROBE6}", interval: 50ms, timeout: 150ms}}\n',
    ),
    (
        "    next_hop: 198.18.2.1\n    kind: cellular\n    probes:\n",
        '    next_hop: 198.18.2.1\n    next_hop6: "2001:db8:2::1"\n    kind: cellular\n    probes:\n'
        f'      - {{kind: icmp, target: "{PROBE6}", interval: 100ms, timeout: 300ms}}\n',
    ),
)


def dual_stack(lab: GatewayLab) -> None:
    """Add IPv6 to a built lab (before failoverd starts), and wait until no address of it is tentative."""
    t = lab.topo
    for node, ifname, cidr in (
        ("gw", "fiber0", "2001:db8:1::2/64"),
        ("isp1", "down0", "2001:db8:1::1/64"),
        ("gw", "mob1", "2001:db8:2::2/64"),
        ("isp2", "down0", "2001:db8:2::1/64"),
        ("isp1", "up0", "2001:db8:101::1/64"),
        ("inet", "isp1", "2001:db8:101::2/64"),
        ("isp2", "up0", "2001:db8:102::1/64"),
        ("inet", "isp2", "2001:db8:102::2/64"),
    ):
        # nodad: usable at once, not after duplicate address detection (a second or more)
        t.sh(node, "ip", "-6", "addr", "add", cidr, "dev", ifname, "nodad")
    for via, dev, metric in (("2001:db8:1::1", "fiber0", "100"), ("2001:db8:2::1", "mob1", "200")):
        t.sh("gw", "ip", "-6", "route", "add", "default", "via", via, "dev", dev, "metric", metric)
    for isp, via in (("isp1", "2001:db8:101::2"), ("isp2", "2001:db8:102::2")):
        t.sh(isp, "ip", "-6", "route", "add", INTERNET6, "via", via)
    t.sh("inet", "ip", "-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:101::1")
    t.sh("inet", "ip", "-6", "route", "add", "2001:db8:2::/64", "via", "2001:db8:102::1")
    serve6(lab, PROBE6)
    text = lab.policy_path.read_text()
    for single, dual in DUAL_STACK:
        assert single in text, f"netlab.POLICY changed: no {single!r} to make dual-stack"
        text = text.replace(single, dual, 1)
    lab.policy_path.write_text(text)
    # As `lab up` does: the veths' link-local addresses out of duplicate detection before failoverd
    # starts (a second or two after build made the links). Here, not in GatewayLab.build, so that the
    # IPv4-only labs, most of them, do not wait for it.
    t.wait_ipv6_settled()


def serve6(lab: GatewayLab, address: str) -> None:
    """One more address of the internet side (a /128 on its loopback), for a service to bind."""
    lab.topo.sh("inet", "ip", "-6", "addr", "add", f"{address}/128", "dev", "lo", "nodad")
