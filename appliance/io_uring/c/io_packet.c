/*
 * The AF_PACKET socket both socket backends stand on (uring/, mmap/;
 * docs/io.md): bound to one interface, every frame of it (the kernel keeps
 * its own copy of each), our own transmissions not received back, and
 * transmissions past the qdisc, as AF_XDP's are. Created unbound, so that
 * a backend sets up its rings before the first frame arrives.
 */
#include "io_internal.h"

#include <errno.h>
#include <net/if.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>

int packet_socket(void)
{
    /* protocol 0: nothing is received until packet_bind(), so a ring set
     * up in between holds every frame (none wait in the socket's queue) */
    int s = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    int one = 1;
    if (setsockopt(s, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one) ||
        setsockopt(s, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one)) {
        int e = errno;
        close(s);
        errno = e;
        return -1;
    }
    return s;
}

int packet_bind(int sock, const char *ifname)
{
    unsigned ifindex = if_nametoindex(ifname);
    if (!ifindex)
        return -1;
    struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = ifindex};
    return bind(sock, (struct sockaddr *)&sll, sizeof sll);
}

int packet_fanout(int sock, uint16_t *group)
{
    if (!group)
        return 0;
    /* by the flow's symmetric hash, so a flow's frames keep their order on
     * one worker; the first socket has the kernel pick a group id no
     * other program in the namespace uses, the others join it */
    int arg = (int)*group | (PACKET_FANOUT_HASH << 16);
    if (!*group)
        arg |= PACKET_FANOUT_FLAG_UNIQUEID << 16;
    if (setsockopt(sock, SOL_PACKET, PACKET_FANOUT, &arg, sizeof arg))
        return -1;
    if (!*group) {
        socklen_t len = sizeof arg;
        if (getsockopt(sock, SOL_PACKET, PACKET_FANOUT, &arg, &len))
            return -1;
        *group = (uint16_t)(arg & 0xffff);
    }
    return 0;
}

int packet_kernel_stats(int sock, uint64_t *drops, uint64_t *out6)
{
    struct tpacket_stats st;   /* TPACKET_V2's are these too */
    socklen_t len = sizeof st;
    if (getsockopt(sock, SOL_PACKET, PACKET_STATISTICS, &st, &len))
        return -errno;
    *drops += st.tp_drops;     /* reading them resets them */
    memset(out6, 0, 6 * sizeof *out6);
    out6[0] = *drops;
    return 0;
}
