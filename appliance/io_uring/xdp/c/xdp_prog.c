/*
 * libbpf/libxdp pieces the runtime uses directly: the XDP program's object
 * and maps, attaching it, the interface's driver.
 */
#include "io_internal.h"

#include <errno.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/ethtool.h>
#include <linux/if_link.h>
#include <linux/sockios.h>

#define IO_MAX_OBJS 8
static struct bpf_object *objs[IO_MAX_OBJS];

/* What libbpf said while loading, kept for the caller instead of printed:
 * where BPF is not allowed its lines ("make sure your kernel supports
 * BPF...") would stand before our own reason and mislead (io_xdp_log). */
static char load_log[4096];
static size_t load_log_len;

static int libbpf_keep(enum libbpf_print_level level, const char *fmt, va_list args)
{
    if (level == LIBBPF_DEBUG || load_log_len >= sizeof load_log - 1)
        return 0;
    int n = vsnprintf(load_log + load_log_len, sizeof load_log - load_log_len, fmt, args);
    if (n > 0)
        load_log_len += (size_t)n < sizeof load_log - load_log_len ? (size_t)n : sizeof load_log - 1 - load_log_len;
    return n;
}

const char *io_xdp_log(void) { return load_log; }

static int load(const char *path, int *prog_fd);

int io_xdp_load(const char *path, int *prog_fd)
{
    load_log_len = 0;
    load_log[0] = 0;
    libbpf_print_fn_t old = libbpf_set_print(libbpf_keep);
    int rc = load(path, prog_fd);
    libbpf_set_print(old);
    return rc;
}

static int load(const char *path, int *prog_fd)
{
    int id = -1;
    for (int i = 0; i < IO_MAX_OBJS; i++)
        if (!objs[i]) {
            id = i;
            break;
        }
    if (id < 0)
        return -ENOSPC;
    struct bpf_object *o = bpf_object__open_file(path, NULL);
    if (!o)
        return -errno;
    int rc = bpf_object__load(o);
    if (rc) {
        bpf_object__close(o);
        return rc;
    }
    struct bpf_program *prog = bpf_object__find_program_by_name(o, "appliance_steer");
    if (!prog) {
        bpf_object__close(o);
        return -ENOENT;
    }
    *prog_fd = bpf_program__fd(prog);
    objs[id] = o;
    return id;
}

int io_xdp_map_fd(int obj_id, const char *name)
{
    if (obj_id < 0 || obj_id >= IO_MAX_OBJS || !objs[obj_id])
        return -EINVAL;
    return bpf_object__find_map_fd_by_name(objs[obj_id], name);
}

int io_driver_name(const char *ifname, char *out, uint32_t size)
{
    struct ethtool_drvinfo info = {.cmd = ETHTOOL_GDRVINFO};
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
    ifr.ifr_data = (void *)&info;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int rc = ioctl(fd, SIOCETHTOOL, &ifr) ? -errno : 0;
    close(fd);
    if (!rc)
        snprintf(out, size, "%s", info.driver);
    return rc;
}

static int libbpf_silent(enum libbpf_print_level level, const char *fmt, va_list args)
{
    return 0;
}

int io_xdp_attach(int ifindex, int prog_fd, int native)
{
    if (!native)
        return bpf_xdp_attach(ifindex, prog_fd, XDP_FLAGS_SKB_MODE, NULL);
    /* A driver without native XDP (a bridge, say) is not an error: the
     * caller falls back to generic and says so; libbpf would print the
     * kernel's refusal on stderr. */
    libbpf_print_fn_t old = libbpf_set_print(libbpf_silent);
    int rc = bpf_xdp_attach(ifindex, prog_fd, XDP_FLAGS_DRV_MODE, NULL);
    libbpf_set_print(old);
    return rc;
}

int io_xdp_detach(int ifindex)
{
    int a = bpf_xdp_detach(ifindex, XDP_FLAGS_DRV_MODE, NULL);
    int b = bpf_xdp_detach(ifindex, XDP_FLAGS_SKB_MODE, NULL);
    return a ? a : b;
}

int io_map_update(int fd, const void *key, const void *value, uint64_t flags)
{
    return bpf_map_update_elem(fd, key, value, flags) ? -errno : 0;
}

int io_map_delete(int fd, const void *key) { return bpf_map_delete_elem(fd, key) ? -errno : 0; }

int io_map_lookup(int fd, const void *key, void *value)
{
    return bpf_map_lookup_elem(fd, key, value) ? -errno : 0;
}

