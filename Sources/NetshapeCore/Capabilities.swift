/// What the running kernel can do, as probed by the kernel layer (or stated by a fake kernel).
public struct KernelCapabilities: Sendable, Equatable, Codable {
    public var clsCgroup: Bool
    public var clsBpf: Bool
    public var fqCodel: Bool
    public var sfq: Bool
    /// A `BPF_CGROUP_INET_SOCK_CREATE` program with netshape's helpers (comm, uid/gid, netns cookie)
    /// loads, cgroup2 is mounted, and `SO_NETNS_COOKIE` answers (Linux 5.14+).
    public var sockCreate: Bool
    /// Classifying by cgroup v2 path works: cls_bpf loads a program calling
    /// `bpf_skb_ancestor_cgroup_id` (Linux 4.19) with a hash map, and cgroup2 is mounted somewhere.
    public var cgroup2: Bool
    /// Why `cgroup2` is false, in the kernel's words (nil when it is true).
    public var cgroup2Problem: String?

    public init(
        clsCgroup: Bool, clsBpf: Bool, fqCodel: Bool, sfq: Bool, sockCreate: Bool = false, cgroup2: Bool = false,
        cgroup2Problem: String? = nil
    ) {
        self.sockCreate = sockCreate
        self.cgroup2 = cgroup2
        self.cgroup2Problem = cgroup2 ? nil : cgroup2Problem
        self.clsCgroup = clsCgroup
        self.clsBpf = clsBpf
        self.fqCodel = fqCodel
        self.sfq = sfq
    }

    /// A mainstream distribution kernel.
    public static let stock = KernelCapabilities(clsCgroup: true, clsBpf: true, fqCodel: true, sfq: true, cgroup2: true)
    /// This project's VM kernel: no cls_cgroup, fq_codel or sfq.
    public static let minimal = KernelCapabilities(
        clsCgroup: false, clsBpf: true, fqCodel: false, sfq: false, cgroup2: true)
}
