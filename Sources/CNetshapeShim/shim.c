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

size_t netshape_cn_msg_size(void) { return sizeof(struct cn_msg); }
size_t netshape_proc_event_size(void) { return sizeof(struct proc_event); }

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

#include <signal.h>
#include <sys/signalfd.h>

_Static_assert(sizeof(sigset_t) <= 128, "netshape_sigset_size covers sigset_t");

int netshape_accept_nonblock(int fd, void *addr, unsigned int *len) {
    return accept4(fd, (struct sockaddr *)addr, (socklen_t *)len, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

int netshape_termination_signalfd(void *old_mask) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGWINCH);
    int rc = pthread_sigmask(SIG_BLOCK, &set, (sigset_t *)old_mask);
    if (rc != 0) {
        errno = rc;
        return -1;
    }
    return signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
}

int netshape_signalfd_read(int fd) {
    struct signalfd_siginfo info;
    ssize_t n = read(fd, &info, sizeof(info));
    if (n == (ssize_t)sizeof(info)) return (int)info.ssi_signo;
    if (n < 0 && errno == EAGAIN) return 0;
    return n < 0 ? -1 : 0;
}

int netshape_restore_sigmask(const void *old_mask) {
    int rc = pthread_sigmask(SIG_SETMASK, (const sigset_t *)old_mask, NULL);
    if (rc != 0) {
        errno = rc;
        return -1;
    }
    return 0;
}
