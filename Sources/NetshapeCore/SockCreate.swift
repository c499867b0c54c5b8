/// The socket-creation classifier: a `BPF_PROG_TYPE_CGROUP_SOCK` program at
/// `BPF_CGROUP_INET_SOCK_CREATE` that sets a new socket's priority to its class's classid (HTB takes
/// `skb->priority` as the classid when its major is the qdisc's, before any filter), looked up in a
/// hash map from (netns cookie, comm, uid, gid) to the class.
///
/// The kernel can see only `comm`, `user` and `group` when a socket is created. The policy's
/// precedence is the first matching class in file order, so the table keeps it exactly: every class
/// with rules puts its kernel-visible part in the table with its position as the rank, and the
/// program takes the hit with the lowest rank. A class that also has rules the kernel cannot see
/// (`exe`, `cmdline`, `cgroup`, `pid`) goes in with classid 0, "defer": a process that might match
/// it leaves the socket alone, and net_cls (the daemon's move) decides, as without the program. So the
/// kernel path either agrees with the daemon's `ProcessMatcher.classify` or stays out of its way.
///
/// The program does one lookup per wildcard mask (comm, uid, gid each given or not: 8 lookups), so
/// a policy edit is only map updates, never a new program.
public enum SockCreate {
    /// Mask bits of a rule: which of its fields are given (the others are wildcards, stored as 0).
    public static let commBit: UInt32 = 1
    public static let uidBit: UInt32 = 2
    public static let gidBit: UInt32 = 4
    /// Map capacity; a policy needing more entries is served by the daemon alone (with a note).
    public static let maxEntries = 16384
    /// The name the program is loaded with, how netshape finds its attachment again.
    public static let programName = "netshape_sock"
    public static let mapName = "netshape_sock"

    /// True when the kernel can decide `rules` on its own at socket creation.
    public static func kernelEvaluable(_ rules: MatchRules) -> Bool {
        !rules.isEmpty && rules.exe.isEmpty && rules.cmdline.isEmpty && rules.cgroup.isEmpty && rules.pid.isEmpty
    }

    /// The table for one namespace's classes (policy order), with user and group names resolved as
    /// the daemon resolves them (an unknown name never matches, here as there).
    public static func compile(
        _ classes: [PlannedClass], users: [String: UInt32], groups: [String: UInt32]
    ) -> [SockRule: SockVerdict] {
        var table: [SockRule: SockVerdict] = [:]
        for (rank, c) in classes.enumerated() where c.name != nil && !c.match.isEmpty {
            let m = c.match
            func ids(_ ps: [Principal], _ names: [String: UInt32]) -> [UInt32?] {
                if ps.isEmpty { return [nil] }
                return ps.compactMap { p -> UInt32?? in
                    switch p {
                    case .id(let i): return .some(i)
                    case .name(let n): return names[n].map { .some($0) }
                    }
                }
            }
            let comms: [String?] = m.comm.isEmpty ? [nil] : m.comm.map { Optional($0) }
            let uids = ids(m.user, users)
            let gids = ids(m.group, groups)
            let verdict = SockVerdict(
                rank: UInt32(rank), classid: kernelEvaluable(m) ? c.spec.classid : .unspecified)
            for comm in comms {
                for uid in uids {
                    for gid in gids {
                        let rule = SockRule(comm: comm, uid: uid, gid: gid)
                        // An earlier class with the same key wins, as it does in file order.
                        if table[rule] == nil { table[rule] = verdict }
                    }
                }
            }
        }
        return table
    }

    /// What the program decides for a socket created by a task with `comm`, `uid`, `gid`: the
    /// lowest-ranked hit of the eight masked lookups. nil: no rule hit; `.unspecified`: defer to
    /// net_cls. This is the program's semantics in Swift, for the property tests.
    public static func evaluate(_ table: [SockRule: SockVerdict], comm: String, uid: UInt32, gid: UInt32) -> TCHandle? {
        var best: SockVerdict?
        for mask in UInt32(0)..<8 {
            let rule = SockRule(
                comm: mask & commBit != 0 ? comm : nil, uid: mask & uidBit != 0 ? uid : nil,
                gid: mask & gidBit != 0 ? gid : nil)
            if let v = table[rule], v.rank < (best?.rank ?? .max) { best = v }
        }
        return best?.classid
    }

    /// Which path serves each named class of `ns`, given the namespace's table (empty: not used).
    public static func path(of c: PlannedClass, table: [SockRule: SockVerdict]) -> ClassPath {
        if c.match.isEmpty { return .manual }
        return table.values.contains { $0.classid == c.spec.classid && $0.classid != .unspecified }
            ? .sockCreate : .daemon
    }
}

/// How a class's processes get their packets into it.
public enum ClassPath: String, Sendable, Equatable, Codable {
    /// The socket-creation program sets the socket's priority (the daemon's net_cls move stays as the
    /// backstop for sockets opened before the process matched).
    case sockCreate = "sock_create"
    /// The daemon (or `apply`) moves matching processes into the class's net_cls cgroup.
    case daemon = "daemon+net_cls"
    /// No rules: only processes placed by hand (`run`, `classify`).
    case manual = "net_cls"
}

extension PlannedClass {
    /// How its processes' packets get into it, in the one set of words `plan` and `status` print:
    /// `sock_create`, `daemon+net_cls` or `net_cls` (from `paths`, `Differ.classPaths`) for a net_cls
    /// class, `cgroup2 path`, or `unmatched traffic` for a default class that no process is placed
    /// in (the implicit one, which has no cgroup, and the default beside only path classes).
    public func path(_ paths: [String: ClassPath]) -> String {
        switch classification {
        case .netCls:
            guard let n = name else { return Classification.unmatched.rawValue }
            return (paths[n] ?? .manual).rawValue
        case .cgroup2, .unmatched: return classification.rawValue
        }
    }
}

/// One key of the table, without the namespace: nil fields are wildcards.
public struct SockRule: Sendable, Hashable, Codable, Comparable, CustomStringConvertible {
    public var comm: String?
    public var uid: UInt32?
    public var gid: UInt32?

    public init(comm: String? = nil, uid: UInt32? = nil, gid: UInt32? = nil) {
        self.comm = comm
        self.uid = uid
        self.gid = gid
    }

    public var mask: UInt32 {
        (comm != nil ? SockCreate.commBit : 0) | (uid != nil ? SockCreate.uidBit : 0)
            | (gid != nil ? SockCreate.gidBit : 0)
    }

    public var description: String {
        "comm=\(comm ?? "*") uid=\(uid.map(String.init) ?? "*") gid=\(gid.map(String.init) ?? "*")"
    }

    public static func < (a: SockRule, b: SockRule) -> Bool {
        (a.comm ?? "", a.uid ?? 0, a.gid ?? 0, a.mask) < (b.comm ?? "", b.uid ?? 0, b.gid ?? 0, b.mask)
    }
}

/// The value of a table entry: the class's position in the policy and its classid (0: defer).
public struct SockVerdict: Sendable, Hashable, Codable, CustomStringConvertible {
    public var rank: UInt32
    public var classid: TCHandle

    public init(rank: UInt32, classid: TCHandle) {
        self.rank = rank
        self.classid = classid
    }

    public var description: String {
        classid == .unspecified ? "rank \(rank) defer" : "rank \(rank) \(classid)"
    }
}

/// A key of the kernel's map: the namespace (its netns cookie) and the rule.
public struct SockKey: Sendable, Hashable, Codable, Comparable, CustomStringConvertible {
    public var cookie: UInt64
    public var rule: SockRule

    public init(cookie: UInt64, rule: SockRule) {
        self.cookie = cookie
        self.rule = rule
    }

    public var description: String { "netns \(cookie) \(rule)" }

    public static func < (a: SockKey, b: SockKey) -> Bool { (a.cookie, a.rule) < (b.cookie, b.rule) }
}

/// The program and map as observed: nil in `ObservedState` when the kernel has no hook.
public struct ObservedSockCreate: Sendable, Equatable {
    /// netshape's program is attached on the cgroup2 root.
    public var attached: Bool
    /// Every entry of its map.
    public var entries: [SockKey: SockVerdict]

    public init(attached: Bool = false, entries: [SockKey: SockVerdict] = [:]) {
        self.attached = attached
        self.entries = entries
    }
}
