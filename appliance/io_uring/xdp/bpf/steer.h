/* Shared between the XDP program and the appliance (map keys, counters). */
#ifndef APPLIANCE_STEER_H
#define APPLIANCE_STEER_H

#define STEER_MAX_SOCKETS 1024
#define STEER_MAX_IFINDEX 65536    /* ifindexes of data interfaces must be below */
#define STEER_MAX_PORTS 262144   /* real-translation ports + host-address sessions */
#define STEER_MAX_ADDRS 65536    /* host addresses + vips + SNAT addresses */
#define STEER_ADDR_HOST 1        /* an address of this host */
#define STEER_ADDR_NAT 2         /* a vip or SNAT address: the appliance's even at TTL 1 */
#define STEER_ADDR_ECHO 4        /* a host address of a `real` icmp translation: its echo requests */

struct steer_addr {
    __u8 family;
    __u8 pad[3];
    __u8 addr[16];
};

struct steer_port {
    __u8 family;
    __u8 proto;
    __u16 port;     /* network order */
    __u8 addr[16];
};

enum steer_counter {
#define _(name, text) STEER_C_##name,
#include "steer_counters.def"
#undef _
    STEER_C__COUNT
};

#endif
