// What Swift cannot call or import directly: the variadic syscall(2) behind bpf(2), union-typed
// bpf_attr, and function-like macros (TC_H_MAKE, MNL_SOCKET_BUFFER_SIZE). Every helper here is a
// thin, logic-free wrapper prefixed netshape_; the typed Swift API lives in NetshapeKernel.
#ifndef NETSHAPE_SHIM_H
#define NETSHAPE_SHIM_H

#include <stdint.h>
#include <stddef.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_sched.h>
#include <linux/pkt_cls.h>
#include <linux/rtnetlink.h>
#include <linux/netlink.h>
#include <linux/connector.h>
#include <linux/cn_proc.h>
#include <linux/if_ether.h>

/// TC_H_MAKE(maj, min): a tc handle from its major (already shifted) and minor parts.
static inline uint32_t netshape_tc_h_make(uint32_t maj, uint32_t min) { return TC_H_MAKE(maj, min); }

/// htons(ETH_P_ALL): the `protocol all` value of a filter's tcm_info.
static inline uint16_t netshape_eth_p_all_be(void) { return (uint16_t)((ETH_P_ALL >> 8) | ((ETH_P_ALL & 0xff) << 8)); }

/// bpf(BPF_PROG_LOAD) for a socket-filter-style program. Returns the program fd, or -1 with errno set.
/// `log`/`log_size` may be NULL/0; the verifier writes its reasons there on failure.
int netshape_bpf_prog_load(uint32_t prog_type, const struct bpf_insn *insns, uint32_t insn_count,
                           const char *license, const char *name, char *log, uint32_t log_size);

/// The size of a struct bpf_insn, to check the Swift-side layout.
static inline size_t netshape_bpf_insn_size(void) { return sizeof(struct bpf_insn); }

/// Builds one eBPF instruction (struct bpf_insn has bitfields Swift cannot set).
struct bpf_insn netshape_bpf_insn(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm);

/// setns(fd, CLONE_NEWNET) (needs _GNU_SOURCE, which Swift's Glibc module does not define).
int netshape_setns_net(int fd);
/// ioctl(fd, NS_GET_NSTYPE): the CLONE_NEW* type of a namespace file, or -1 with errno set.
int netshape_ns_get_nstype(int fd);
/// The CLONE_NEWNET constant (sched.h needs _GNU_SOURCE).
int netshape_clone_newnet(void);
/// unshare(CLONE_NEWNET) for the calling thread.
int netshape_unshare_net(void);
/// fstatfs(fd).f_type, or -1 with errno set.
long netshape_fstatfs_type(int fd);
/// statfs(path).f_type, or -1 with errno set.
long netshape_statfs_type(const char *path);
/// mount(2) with the flags netshape uses for a cgroup v1 hierarchy: nosuid, nodev, noexec.
int netshape_mount_cgroup_v1(const char *target, const char *options);

/// mount --bind SRC DST (how `ip netns add` pins a namespace to a file).
int netshape_bind_mount(const char *src, const char *dst);
/// umount2(path, MNT_DETACH).
int netshape_umount_detach(const char *path);

/// sd_notify without libsystemd: one datagram to the AF_UNIX socket named by $NOTIFY_SOCKET
/// (a leading '@' is the abstract namespace). Returns 0 or -1 with errno set.
int netshape_sd_notify(const char *socket_path, const char *state);

/// pthread_setname_np (a GNU extension): names a thread for ps/top/gdb.
int netshape_set_thread_name(unsigned long thread, const char *name);

/// accept4(fd, addr, len, SOCK_NONBLOCK | SOCK_CLOEXEC): glibc declares it only under _GNU_SOURCE.
int netshape_accept_nonblock(int fd, void *addr, unsigned int *len);

/// Takes SIGINT, SIGTERM, SIGHUP and SIGWINCH process-wide (whatever thread they reach) as bytes on
/// a non-blocking pipe; returns its read end, -1 with errno. One taker at a time (EBUSY).
int netshape_termination_signals_open(void);

/// Reads one taken signal from `fd`: its number, 0 when none is pending, -1 with errno.
int netshape_termination_signal_read(int fd);

/// Puts back the signal handlers found at open, then closes the pipe (both ends).
void netshape_termination_signals_close(int fd);

// The shared bpf(2) wrappers behind Sources/NetshapeKernel/BPF.swift: one per command, each fills
// a zeroed union bpf_attr and calls syscall(__NR_bpf). Every one returns -1 with errno set on failure.

/// BPF_MAP_CREATE. `name` may be NULL (truncated to BPF_OBJ_NAME_LEN - 1).
int netshape_bpf_map_create(uint32_t map_type, uint32_t key_size, uint32_t value_size, uint32_t max_entries,
                            uint32_t map_flags, const char *name);
/// BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM (with `flags`: BPF_ANY/NOEXIST/EXIST), BPF_MAP_DELETE_ELEM
/// (`value` ignored): `cmd` is the bpf command.
int netshape_bpf_map_elem(uint32_t cmd, int map_fd, const void *key, void *value, uint64_t flags);
/// BPF_MAP_GET_NEXT_KEY; `key` NULL gives the first key.
int netshape_bpf_map_next_key(int map_fd, const void *key, void *next_key);
/// BPF_PROG_LOAD with an expected attach type (0 when the type needs none) and a verifier log
/// (`log` NULL/0 for none; `log_level` 1 or 2).
int netshape_bpf_prog_load_attach(uint32_t prog_type, uint32_t expected_attach_type, const struct bpf_insn *insns,
                                  uint32_t insn_count, const char *license, const char *name, char *log,
                                  uint32_t log_size, uint32_t log_level);
/// BPF_OBJ_PIN / BPF_OBJ_GET (bpffs paths).
int netshape_bpf_obj_pin(int fd, const char *path);
int netshape_bpf_obj_get(const char *path, uint32_t file_flags);
/// BPF_PROG_ATTACH / BPF_PROG_DETACH on a target fd (a cgroup directory, a socket).
int netshape_bpf_prog_attach(int prog_fd, int target_fd, uint32_t attach_type, uint32_t flags);
int netshape_bpf_prog_detach(int prog_fd, int target_fd, uint32_t attach_type);
/// BPF_PROG_QUERY: on entry *prog_count is the room in `prog_ids`; on return the number attached.
int netshape_bpf_prog_query(int target_fd, uint32_t attach_type, uint32_t query_flags, uint32_t *attach_flags,
                            uint32_t *prog_ids, uint32_t *prog_count);
/// BPF_PROG_GET_FD_BY_ID / BPF_MAP_GET_FD_BY_ID.
int netshape_bpf_prog_get_fd_by_id(uint32_t id);
int netshape_bpf_map_get_fd_by_id(uint32_t id);
/// BPF_OBJ_GET_INFO_BY_FD for a program: its id, type, name (16 bytes) and up to *map_count map ids
/// (on return *map_count is how many maps it uses).
int netshape_bpf_prog_info(int prog_fd, uint32_t *id, uint32_t *type, char *name, uint32_t *map_ids,
                           uint32_t *map_count);
/// BPF_OBJ_GET_INFO_BY_FD for a map: id, type, key and value size, max entries, name (16 bytes).
int netshape_bpf_map_info(int map_fd, uint32_t *id, uint32_t *type, uint32_t *key_size, uint32_t *value_size,
                          uint32_t *max_entries, char *name);
/// BPF_PSEUDO_MAP_FD, the src_reg of the ld_imm64 that loads a map by fd.
static inline uint8_t netshape_bpf_pseudo_map_fd(void) { return BPF_PSEUDO_MAP_FD; }

#endif
