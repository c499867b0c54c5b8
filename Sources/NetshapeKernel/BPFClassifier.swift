internal import CNetshapeShim
import Glibc

/// The cls_bpf fallback for kernels without cls_cgroup:
///
///     r0 = bpf_get_cgroup_classid(skb)   // BPF_CALL, imm = BPF_FUNC_get_cgroup_classid (17)
///     exit                               // BPF_EXIT
///
/// r1 already holds the skb (the program's context) on entry, so the call needs no setup. Attached
/// without direct-action, cls_bpf takes the return value as the classid (0 = no match, try the
/// next filter); in direct-action mode only 16 bits would survive in `skb->tc_classid`.
/// `bpf_get_cgroup_classid` reads the net_cls classid of the socket's cgroup, so it works on egress
/// only, where the packet still carries its socket.
enum BPFClassifier {
    /// `BPF_JMP | BPF_CALL`, `BPF_JMP | BPF_EXIT`.
    static let call: UInt8 = 0x05 | 0x80
    static let exit: UInt8 = 0x05 | 0x90
    static let getCgroupClassid: Int32 = 17

    /// The program's instructions (exposed for the golden test).
    static func instructions() -> [bpf_insn] {
        [netshape_bpf_insn(call, 0, 0, 0, getCgroupClassid), netshape_bpf_insn(exit, 0, 0, 0, 0)]
    }

    /// Loads the program (`bpf(BPF_PROG_LOAD, BPF_PROG_TYPE_SCHED_CLS)`) and returns its fd; the
    /// caller closes it once the filter holds its own reference. The verifier log is in the error.
    static func load() throws -> Int32 {
        let insns = instructions()
        var log = [CChar](repeating: 0, count: 4096)
        let fd = insns.withUnsafeBufferPointer { p in
            netshape_bpf_prog_load(
                3 /* BPF_PROG_TYPE_SCHED_CLS */, p.baseAddress, UInt32(p.count), "GPL",
                "netshape_clsid", &log, UInt32(log.count))
        }
        guard fd >= 0 else {
            let e = errno
            let verifier = String(cString: log)
            throw KernelError(
                .bpf, "bpf(BPF_PROG_LOAD, sched_cls r0 = bpf_get_cgroup_classid(skb))", errno: e,
                reason: String(cString: strerror(e)) + (verifier.isEmpty ? "" : "; verifier: \(verifier)"))
        }
        return fd
    }
}
