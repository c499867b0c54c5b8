/// What the running kernel can do, as probed by the kernel layer (or stated by a fake kernel).
public struct KernelCapabilities: Sendable, Equatable, Codable {
    public var clsCgroup: Bool
    public var clsBpf: Bool
    public var fqCodel: Bool
    public var sfq: Bool
    /// A `BPF_CGROUP_INET_SOCK_CREATE` program with netshape's helpers (comm, uid/gid, netns cookie)
    /// loads, cgroup2 is mounted, and `SO_NETNS_COOKIE` answers (Linux 5.14+).
    public var sockCreate: Bool

    public init(clsCgroup: Bool, clsBpf: Bool, fqCodel: Bool, sfq: Bool, sockCreate: Bool = false) {
        self.sockCreate = sockCreate
        self.clsCgroup = clsCgroup
        self.clsBpf = clsBpf
        self.fqCodel = fqCodel
        self.sfq = sfq
    }

    /// A mainstream distribution kernel.
    public static let stock = KernelCapabilities(clsCgroup: true, clsBpf: true, fqCodel: true, sfq: true)
    /// This project's VM kernel: no cls_cgroup, fq_codel or sfq.
    public static let minimal = KernelCapabilities(clsCgroup: false, clsBpf: true, fqCodel: false, sfq: false)
}
