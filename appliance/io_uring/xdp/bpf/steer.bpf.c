/*
 * The appliance's XDP program: decides, per frame, whether the kernel or the
 * appliance (through an AF_XDP socket) gets it.
 *
 * To the kernel (XDP_PASS): non-IP (ARP, LLDP), IPv6 neighbour discovery,
 * multicast/broadcast, transit with TTL/hop limit <= 1 (the kernel sends
 * time-exceeded), and traffic addressed to the host itself -- except the
 * ports of `real` translations and the return traffic of flows whose source
 * the appliance rewrote to a host address, which are listed in the `ports`
 * map, echo requests to a host address of a `real` icmp translation, and
 * fragments (their ports are in the first fragment only).
 * To the appliance: everything else (vips, transit, SNAT), and frames to a
 * vip or SNAT address at any TTL: the kernel has no route for those, so
 * the appliance answers time-exceeded itself, quoting the frame as sent.
 * Also ARP requests and IPv6 neighbour solicitations for a vip or SNAT
 * address that is not the host's: the kernel would not answer them, and
 * the appliance does (io.c answer_neighbour), so that hosts on a link
 * reach a vip or SNAT address inside that link's prefix.
 *
 * Maps are filled by appliance/io_uring/_steering.py from the configuration, the
 * kernel's addresses and the sessions.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "steer.h"

struct {
    __uint(type, BPF_MAP_TYPE_XSKMAP);
    __uint(max_entries, STEER_MAX_SOCKETS);
    __type(key, __u32);
    __type(value, __u32);
} xsks SEC(".maps");

/* ifindex -> 1 + first xsks key of that interface (its queues follow); 0 =
 * not ours. An array: the lookup is an index, on every redirected frame. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, STEER_MAX_IFINDEX);
    __type(key, __u32);
    __type(value, __u32);
} ifbase SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, STEER_MAX_ADDRS);
    __type(key, struct steer_addr);
    __type(value, __u32);
} addrs SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, STEER_MAX_PORTS);
    __type(key, struct steer_port);
    __type(value, __u32);
} ports SEC(".maps");

/* [0]: until when (CLOCK_MONOTONIC ns) frames for the appliance that find
 * no socket are dropped rather than passed: set by an appliance that stops
 * to be restarted with its sessions (`run --state-file`), so that the kernel
 * does not forward that traffic untranslated in between. 0: no hold. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} hold SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, STEER_C__COUNT);
    __type(key, __u32);
    __type(value, __u64);
} counters SEC(".maps");

static __always_inline int count(__u32 c, int action)
{
    __u64 *v = bpf_map_lookup_elem(&counters, &c);
    if (v)
        *v += 1;
    return action;
}

/* Redirected frames are not counted here: the appliance counts what it
 * receives, and this is the per-packet path of the generator's CPU. */
static __always_inline int no_socket(void)
{
    __u32 zero = 0;
    __u64 *until = bpf_map_lookup_elem(&hold, &zero);
    if (until && bpf_ktime_get_ns() < *until)
        return count(STEER_C_HELD, XDP_DROP);
    return count(STEER_C_PASS_NO_SOCKET, XDP_PASS);
}

static __always_inline int to_appliance(struct xdp_md *ctx)
{
    __u32 ifindex = ctx->ingress_ifindex;
    __u32 *base = bpf_map_lookup_elem(&ifbase, &ifindex);
    if (!base || !*base)
        return no_socket();
    /* the low bits of the flags: the action when the slot has no socket */
    long act = bpf_redirect_map(&xsks, *base - 1 + ctx->rx_queue_index, XDP_ABORTED);
    return act == XDP_REDIRECT ? (int)act : no_socket();
}

/* An address the appliance answers for: a vip or SNAT address that is not
 * also the host's (the kernel answers for its own). */
static __always_inline int nat_only(struct steer_addr *ak)
{
    __u32 *flags = bpf_map_lookup_elem(&addrs, ak);
    return flags && (*flags & (STEER_ADDR_NAT | STEER_ADDR_HOST)) == STEER_ADDR_NAT;
}

/* An ARP request (Ethernet/IPv4) or a neighbour solicitation (no extension
 * headers) whose target is nat_only(). */
static __always_inline int nat_neighbour_request(struct ethhdr *eth, void *end)
{
    struct steer_addr ak = {};
    if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
        __u8 *arp = (void *)(eth + 1);
        if ((void *)(arp + 28) > end)
            return 0;
        /* htype 1, ptype IPv4, hlen 6, plen 4, op request */
        if (arp[0] != 0 || arp[1] != 1 || arp[2] != 0x08 || arp[3] != 0 || arp[4] != 6 || arp[5] != 4 ||
            arp[6] != 0 || arp[7] != 1)
            return 0;
        ak.family = 4;
        __builtin_memcpy(ak.addr, arp + 24, 4);
        return nat_only(&ak);
    }
    if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        __u8 *ns = (void *)(ip6 + 1);
        if ((void *)(ns + 24) > end || ip6->nexthdr != IPPROTO_ICMPV6 || ns[0] != 135 || ns[1] != 0 ||
            ip6->hop_limit != 255)
            return 0;
        ak.family = 6;
        __builtin_memcpy(ak.addr, ns + 8, 16);
        return nat_only(&ak);
    }
    return 0;
}

SEC("xdp")
int appliance_steer(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct steer_addr ak = {};
    struct steer_port pk = {};
    __u8 proto, ttl, frag = 0;
    void *l4;

    if ((void *)(eth + 1) > end)
        return count(STEER_C_PASS_KERNEL, XDP_PASS);
    if (nat_neighbour_request(eth, end))
        return to_appliance(ctx);
    if (eth->h_dest[0] & 1)   /* multicast / broadcast */
        return count(STEER_C_PASS_KERNEL, XDP_PASS);
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > end || ip->ihl < 5)
            return count(STEER_C_PASS_KERNEL, XDP_PASS);
        ttl = ip->ttl;
        ak.family = 4;
        __builtin_memcpy(ak.addr, &ip->daddr, 4);
        proto = ip->protocol;
        l4 = (void *)ip + ip->ihl * 4;
        frag = (ip->frag_off & bpf_htons(0x3fff)) != 0;   /* more fragments, or an offset */
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > end)
            return count(STEER_C_PASS_KERNEL, XDP_PASS);
        ttl = ip6->hop_limit;
        if (ip6->daddr.s6_addr[0] == 0xff)
            return count(STEER_C_PASS_KERNEL, XDP_PASS);
        ak.family = 6;
        __builtin_memcpy(ak.addr, &ip6->daddr, 16);
        proto = ip6->nexthdr;
        l4 = ip6 + 1;
        frag = proto == 44;   /* a fragment header first: the common case */
        if (proto == IPPROTO_ICMPV6) {
            __u8 *t = l4;
            if ((void *)(t + 1) > end)
                return count(STEER_C_PASS_KERNEL, XDP_PASS);
            if (*t >= 133 && *t <= 137)   /* router/neighbour discovery */
                return count(STEER_C_PASS_KERNEL, XDP_PASS);
        }
    } else {
        return count(STEER_C_PASS_KERNEL, XDP_PASS);
    }

    __u32 *flags = bpf_map_lookup_elem(&addrs, &ak);
    if (!flags || !(*flags & STEER_ADDR_HOST)) {
        if (ttl <= 1 && !(flags && (*flags & STEER_ADDR_NAT)))
            return count(STEER_C_PASS_TTL, XDP_PASS);   /* transit expiring here */
        return to_appliance(ctx);   /* vip, SNAT address that is not the host's, transit */
    }

    /* Addressed to the host: only listed ports go to the appliance. A
     * fragment's ports are in its datagram's first fragment only, so every
     * fragment goes to the appliance, whose NAT follows a translated
     * datagram's fragments and hands the kernel the others, all by one
     * path (io.to_kernel_local). */
    if (frag)
        return to_appliance(ctx);
    pk.family = ak.family;
    pk.proto = proto;
    __builtin_memcpy(pk.addr, ak.addr, 16);
    if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
        __u16 *p = l4;
        if ((void *)(p + 2) > end)
            return count(STEER_C_PASS_HOST, XDP_PASS);
        pk.port = p[1];
    } else if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
        __u8 *icmp = l4;
        if ((void *)(icmp + 8) > end)
            return count(STEER_C_PASS_HOST, XDP_PASS);
        __u8 type = icmp[0];
        if (type == 0 || type == 129)      /* echo reply: identifier */
            pk.port = *(__u16 *)(icmp + 4);
        else if ((type == 8 || type == 128) && (*flags & STEER_ADDR_ECHO))
            return to_appliance(ctx);      /* echo request to a `real` icmp translation */
        else if (type == 3 || type == 11 || type == 12 || (type >= 1 && type <= 4 && proto == IPPROTO_ICMPV6))
            return to_appliance(ctx);      /* errors: the NAT matches the quoted flow */
        else
            return count(STEER_C_PASS_HOST, XDP_PASS);
    } else {
        return count(STEER_C_PASS_HOST, XDP_PASS);
    }
    if (bpf_map_lookup_elem(&ports, &pk))
        return to_appliance(ctx);
    return count(STEER_C_PASS_HOST, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
