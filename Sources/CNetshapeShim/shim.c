#define _GNU_SOURCE
#include <linux/nsfs.h>
#include <sys/ioctl.h>
#include "CNetshapeShim.h"
#include <sched.h>
#include <sys/vfs.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

_Static_assert(sizeof(struct bpf_insn) == 8, "struct bpf_insn is 8 bytes on every architecture");

int netshape_bpf_prog_load(uint32_t prog_type, const struct bpf_insn *insns, uint32_t insn_count,
                           const char *license, const char *name, char *log, uint32_t log_size) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_type = prog_type;
    attr.insns = (uint64_t)(uintptr_t)insns;
    attr.insn_cnt = insn_count;
    attr.license = (uint64_t)(uintptr_t)license;
    if (log && log_size) {
        attr.log_buf = (uint64_t)(uintptr_t)log;
        attr.log_size = log_size;
        attr.log_level = 1;
    }
    if (name) strncpy(attr.prog_name, name, sizeof(attr.prog_name) - 1);
    return (int)syscall(__NR_bpf, BPF_PROG_LOAD, &attr, sizeof(attr));
}

struct bpf_insn netshape_bpf_insn(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
    struct bpf_insn insn;
    memset(&insn, 0, sizeof(insn));
    insn.code = code;
    insn.dst_reg = dst;
    insn.src_reg = src;
    insn.off = off;
    insn.imm = imm;
    return insn;
}

int netshape_setns_net(int fd) { return setns(fd, CLONE_NEWNET); }

int netshape_ns_get_nstype(int fd) { return ioctl(fd, NS_GET_NSTYPE); }
int netshape_clone_newnet(void) { return CLONE_NEWNET; }
int netshape_unshare_net(void) { return unshare(CLONE_NEWNET); }
long netshape_fstatfs_type(int fd) {
    struct statfs fs;
    if (fstatfs(fd, &fs) != 0) return -1;
    return (long)fs.f_type;
}
long netshape_statfs_type(const char *path) {
    struct statfs fs;
    if (statfs(path, &fs) != 0) return -1;
    return (long)fs.f_type;
}
int netshape_mount_cgroup_v1(const char *target, const char *options) {
    return mount("cgroup", target, "cgroup", MS_NOSUID | MS_NODEV | MS_NOEXEC, options);
}
int netshape_bind_mount(const char *src, const char *dst) { return mount(src, dst, "none", MS_BIND, NULL); }
int netshape_umount_detach(const char *path) { return umount2(path, MNT_DETACH); }

int netshape_sd_notify(const char *socket_path, const char *state) {
    struct sockaddr_un addr;
    size_t len = strlen(socket_path);
    if (len == 0 || len >= sizeof(addr.sun_path)) { errno = EINVAL; return -1; }
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, socket_path, len);
    if (addr.sun_path[0] == '@') addr.sun_path[0] = 0;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    ssize_t n = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&addr,
                       (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len));
    int saved = errno;
    close(fd);
    errno = saved;
    return n < 0 ? -1 : 0;
}
int netshape_set_thread_name(unsigned long thread, const char *name) { return pthread_setname_np((pthread_t)thread, name); }

#include <fcntl.h>
#include <signal.h>

int netshape_accept_nonblock(int fd, void *addr, unsigned int *len) {
    return accept4(fd, (struct sockaddr *)addr, (socklen_t *)len, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

// A self-pipe rather than a signalfd: a signalfd only sees signals blocked in every thread, and
// an async main has threads (the concurrency pool) that never blocked them, so a SIGTERM would
// kill the process with the terminal left raw. A handler runs on whichever thread the kernel picks.
static const int netshape_termination_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGWINCH};
#define NETSHAPE_TERMINATION_SIGNALS (sizeof(netshape_termination_signals) / sizeof(int))
static struct sigaction netshape_saved_actions[NETSHAPE_TERMINATION_SIGNALS];
static volatile int netshape_signal_pipe_write = -1;

static void netshape_on_termination_signal(int sig) {
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    if (write(netshape_signal_pipe_write, &b, 1) < 0) { /* full pipe: a signal is already pending */
    }
    errno = saved;
}

int netshape_termination_signals_open(void) {
    int fds[2];
    if (netshape_signal_pipe_write >= 0) {
        errno = EBUSY;
        return -1;
    }
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return -1;
    netshape_signal_pipe_write = fds[1];
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = netshape_on_termination_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (size_t i = 0; i < NETSHAPE_TERMINATION_SIGNALS; i++) {
        sigaction(netshape_termination_signals[i], &sa, &netshape_saved_actions[i]);
    }
    return fds[0];
}

int netshape_termination_signal_read(int fd) {
    unsigned char b;
    ssize_t n = read(fd, &b, 1);
    if (n == 1) return (int)b;
    if (n < 0 && errno == EAGAIN) return 0;
    return n < 0 ? -1 : 0;
}

void netshape_termination_signals_close(int fd) {
    for (size_t i = 0; i < NETSHAPE_TERMINATION_SIGNALS; i++) {
        sigaction(netshape_termination_signals[i], &netshape_saved_actions[i], NULL);
    }
    // The handlers are gone before the pipe: a late signal cannot write to a closed pipe.
    close(netshape_signal_pipe_write);
    netshape_signal_pipe_write = -1;
    close(fd);
}

static int netshape_bpf(int cmd, union bpf_attr *attr) { return (int)syscall(__NR_bpf, cmd, attr, sizeof(*attr)); }

int netshape_bpf_map_create(uint32_t map_type, uint32_t key_size, uint32_t value_size, uint32_t max_entries,
                            uint32_t map_flags, const char *name) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_type = map_type;
    attr.key_size = key_size;
    attr.value_size = value_size;
    attr.max_entries = max_entries;
    attr.map_flags = map_flags;
    if (name) strncpy(attr.map_name, name, sizeof(attr.map_name) - 1);
    return netshape_bpf(BPF_MAP_CREATE, &attr);
}

int netshape_bpf_map_elem(uint32_t cmd, int map_fd, const void *key, void *value, uint64_t flags) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_fd = (uint32_t)map_fd;
    attr.key = (uint64_t)(uintptr_t)key;
    attr.value = (uint64_t)(uintptr_t)value;
    attr.flags = flags;
    return netshape_bpf((int)cmd, &attr);
}

int netshape_bpf_map_next_key(int map_fd, const void *key, void *next_key) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_fd = (uint32_t)map_fd;
    attr.key = (uint64_t)(uintptr_t)key;
    attr.next_key = (uint64_t)(uintptr_t)next_key;
    return netshape_bpf(BPF_MAP_GET_NEXT_KEY, &attr);
}

int netshape_bpf_prog_load_attach(uint32_t prog_type, uint32_t expected_attach_type, const struct bpf_insn *insns,
                                  uint32_t insn_count, const char *license, const char *name, char *log,
                                  uint32_t log_size, uint32_t log_level) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_type = prog_type;
    attr.expected_attach_type = expected_attach_type;
    attr.insns = (uint64_t)(uintptr_t)insns;
    attr.insn_cnt = insn_count;
    attr.license = (uint64_t)(uintptr_t)license;
    if (log && log_size) {
        attr.log_buf = (uint64_t)(uintptr_t)log;
        attr.log_size = log_size;
        attr.log_level = log_level;
    }
    if (name) strncpy(attr.prog_name, name, sizeof(attr.prog_name) - 1);
    return netshape_bpf(BPF_PROG_LOAD, &attr);
}

int netshape_bpf_obj_pin(int fd, const char *path) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.pathname = (uint64_t)(uintptr_t)path;
    attr.bpf_fd = (uint32_t)fd;
    return netshape_bpf(BPF_OBJ_PIN, &attr);
}

int netshape_bpf_obj_get(const char *path, uint32_t file_flags) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.pathname = (uint64_t)(uintptr_t)path;
    attr.file_flags = file_flags;
    return netshape_bpf(BPF_OBJ_GET, &attr);
}

int netshape_bpf_prog_attach(int prog_fd, int target_fd, uint32_t attach_type, uint32_t flags) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.target_fd = (uint32_t)target_fd;
    attr.attach_bpf_fd = (uint32_t)prog_fd;
    attr.attach_type = attach_type;
    attr.attach_flags = flags;
    return netshape_bpf(BPF_PROG_ATTACH, &attr);
}

int netshape_bpf_prog_detach(int prog_fd, int target_fd, uint32_t attach_type) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.target_fd = (uint32_t)target_fd;
    attr.attach_bpf_fd = (uint32_t)prog_fd;
    attr.attach_type = attach_type;
    return netshape_bpf(BPF_PROG_DETACH, &attr);
}

int netshape_bpf_prog_query(int target_fd, uint32_t attach_type, uint32_t query_flags, uint32_t *attach_flags,
                            uint32_t *prog_ids, uint32_t *prog_count) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.query.target_fd = (uint32_t)target_fd;
    attr.query.attach_type = attach_type;
    attr.query.query_flags = query_flags;
    attr.query.prog_ids = (uint64_t)(uintptr_t)prog_ids;
    attr.query.prog_cnt = *prog_count;
    int rc = netshape_bpf(BPF_PROG_QUERY, &attr);
    /* prog_cnt is written back on success and on ENOSPC (the ids did not fit). */
    *prog_count = attr.query.prog_cnt;
    if (attach_flags) *attach_flags = attr.query.attach_flags;
    return rc;
}

int netshape_bpf_prog_get_fd_by_id(uint32_t id) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_id = id;
    return netshape_bpf(BPF_PROG_GET_FD_BY_ID, &attr);
}

int netshape_bpf_map_get_fd_by_id(uint32_t id) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_id = id;
    return netshape_bpf(BPF_MAP_GET_FD_BY_ID, &attr);
}

/// BPF_OBJ_GET_INFO_BY_FD into `info` (a bpf_prog_info or bpf_map_info of `len` bytes).
static int obj_info(int fd, void *info, uint32_t len) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.info.bpf_fd = (uint32_t)fd;
    attr.info.info_len = len;
    attr.info.info = (uint64_t)(uintptr_t)info;
    return netshape_bpf(BPF_OBJ_GET_INFO_BY_FD, &attr);
}

int netshape_bpf_prog_info(int prog_fd, uint32_t *id, uint32_t *type, char *name, uint32_t *map_ids,
                           uint32_t *map_count) {
    struct bpf_prog_info info;
    memset(&info, 0, sizeof(info));
    info.nr_map_ids = *map_count;
    info.map_ids = (uint64_t)(uintptr_t)map_ids;
    int rc = obj_info(prog_fd, &info, sizeof(info));
    if (rc != 0) return rc;
    *id = info.id;
    *type = info.type;
    memcpy(name, info.name, sizeof(info.name));
    *map_count = info.nr_map_ids;
    return 0;
}

int netshape_bpf_map_info(int map_fd, uint32_t *id, uint32_t *type, uint32_t *key_size, uint32_t *value_size,
                          uint32_t *max_entries, char *name) {
    struct bpf_map_info info;
    memset(&info, 0, sizeof(info));
    int rc = obj_info(map_fd, &info, sizeof(info));
    if (rc != 0) return rc;
    *id = info.id;
    *type = info.type;
    *key_size = info.key_size;
    *value_size = info.value_size;
    *max_entries = info.max_entries;
    memcpy(name, info.name, sizeof(info.name));
    return 0;
}
