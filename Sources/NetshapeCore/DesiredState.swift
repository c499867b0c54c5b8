/// The leaf queue attached under one HTB leaf class.
public enum LeafQueue: Sendable, Hashable, Codable, CustomStringConvertible {
    case fqCodel
    case sfq
    /// Packet-count limit.
    case pfifo(limit: UInt32)
    /// Byte limit.
    case bfifo(limit: UInt32)

    /// The qdisc kind string (`TCA_KIND`).
    public var kind: String {
        switch self {
        case .fqCodel: return "fq_codel"
        case .sfq: return "sfq"
        case .pfifo: return "pfifo"
        case .bfifo: return "bfifo"
        }
    }

    /// The arguments after the kind in a `tc qdisc` command.
    public var description: String {
        switch self {
        case .fqCodel, .sfq: return kind
        case .pfifo(let l): return "pfifo limit \(l)"
        case .bfifo(let l): return "bfifo limit \(Size(bytes: UInt64(l)))"
        }
    }
}

/// The cgroup classifier in use on a device.
public enum ClassifierKind: String, Sendable, Hashable, Codable {
    /// `cls_cgroup` (`tc filter … handle 1: cgroup`).
    case cgroup
    /// `cls_bpf` running `r0 = bpf_get_cgroup_classid(skb); exit`, not in direct-action mode.
    case bpf
    /// `cls_bpf` running netshape's cgroup v2 classifier: the net_cls classid when the socket has
    /// one, else the class its cgroup v2 path (or the nearest mapped ancestor) is mapped to in a
    /// hash map of cgroup id → classid, else 0 (the default class). Chosen when a class has cgroup
    /// v2 path rules only.
    case cgroup2

    /// `TCA_KIND`.
    public var kind: String { self == .cgroup ? "cgroup" : "bpf" }

    /// `TCA_BPF_NAME` of netshape's cls_bpf filters: how a dump tells the two programs apart.
    public var filterName: String? {
        switch self {
        case .cgroup: return nil
        case .bpf: return FilterSpec.bpfProgramName
        case .cgroup2: return FilterSpec.cgroup2ProgramName
        }
    }
}

/// How a class's processes reach it.
public enum Classification: String, Sendable, Hashable, Codable {
    /// Moved into the class's net_cls cgroup (by `apply` and the daemon); the classifier reads its classid.
    case netCls = "net_cls"
    /// Classified in the kernel from each socket's cgroup v2 membership: nothing is moved.
    case cgroup2 = "cgroup2 path"
    /// The default class of a namespace whose other classes all go by cgroup v2 path: it takes
    /// what nothing else does (HTB's default), so it needs no net_cls cgroup either.
    case unmatched = "unmatched traffic"
}

/// One cgroup v2 path a class's rule names, with the classid its id is mapped to.
public struct Cgroup2Rule: Sendable, Hashable {
    /// Relative to the cgroup2 mount, no leading or trailing slash ("" = the root cgroup).
    public var path: String
    public var classid: TCHandle
    public var className: String
    public init(path: String, classid: TCHandle, className: String) {
        self.path = path
        self.classid = classid
        self.className = className
    }

    /// `path` as a rule writes it, normalised: `/system.slice//a/` → `system.slice/a`.
    public static func normalize(_ path: String) -> String {
        path.split(separator: "/").joined(separator: "/")
    }

    /// Entries the classifier's map holds (one per existing directory a rule names).
    public static let maxEntries = 4096

    /// The rules of `classes` (policy order), without the paths an earlier rule already covers,
    /// and those shadowed paths with the class that takes them.
    static func layout(_ classes: [PlannedClass]) -> (
        rules: [Cgroup2Rule], shadowed: [(path: String, className: String, takenBy: String)]
    ) {
        var rules: [Cgroup2Rule] = []
        var shadowed: [(path: String, className: String, takenBy: String)] = []
        var cover = Cgroup2Cover()
        for c in classes where c.classification == .cgroup2 {
            guard let n = c.name else { continue }
            for raw in c.match.cgroup {
                let p = normalize(raw)
                if let by = cover.covering(p) {
                    if rules[by].className != n { shadowed.append((p, n, rules[by].className)) }
                    continue
                }
                cover.insert(p, at: rules.count)
                rules.append(Cgroup2Rule(path: p, classid: c.spec.classid, className: n))
            }
        }
        return (rules, shadowed)
    }
}

/// Normalised cgroup v2 paths by position, asked which earliest one is a given path or one of its
/// ancestors (`cgroupPrefix`): one lookup per level of the path, where comparing it with every
/// earlier path made a policy of 4000 paths take 18 s to plan.
public struct Cgroup2Cover: Sendable {
    private var position: [String: Int] = [:]

    public init() {}

    /// Records `path` at `position` unless it is there already (the earlier one stays).
    public mutating func insert(_ path: String, at position: Int) {
        if self.position[path] == nil { self.position[path] = position }
    }

    /// The earliest position of a path that is `path` or an ancestor of it ("" covers every path).
    public func covering(_ path: String) -> Int? {
        var best = position[""]
        var prefix = ""
        for part in path.split(separator: "/") {
            prefix = prefix.isEmpty ? String(part) : prefix + "/" + part
            if let p = position[prefix], p < best ?? .max { best = p }
        }
        return best
    }
}

/// An HTB root qdisc: `tc qdisc add dev D root handle M: htb default N`.
public struct HTBQdiscSpec: Sendable, Hashable, Codable {
    public var handle: TCHandle
    /// Minor of the class unclassified traffic goes to.
    public var defaultMinor: UInt16
    public init(handle: TCHandle, defaultMinor: UInt16) {
        self.handle = handle
        self.defaultMinor = defaultMinor
    }
}

/// One HTB class: `tc class add dev D parent P classid C htb rate … ceil … burst … cburst … prio … quantum …`.
public struct HTBClassSpec: Sendable, Hashable, Codable {
    public var classid: TCHandle
    public var parent: TCHandle
    public var rate: Rate
    public var ceil: Rate
    public var burst: Size
    public var cburst: Size
    public var priority: UInt32
    public var quantum: UInt32

    public init(
        classid: TCHandle, parent: TCHandle, rate: Rate, ceil: Rate, burst: Size, cburst: Size,
        priority: UInt32, quantum: UInt32
    ) {
        self.classid = classid
        self.parent = parent
        self.rate = rate
        self.ceil = ceil
        self.burst = burst
        self.cburst = cburst
        self.priority = priority
        self.quantum = quantum
    }

    /// The `htb …` arguments of the equivalent tc command.
    public var tcArguments: String {
        "htb rate \(rate) ceil \(ceil) burst \(burst) cburst \(cburst) prio \(priority) quantum \(quantum)"
    }

    /// True when `observed` carries the same parameters, allowing for the kernel's rounding of
    /// bursts (HTB stores them as transmit times in psched ticks, so a dump reads back a few bytes off).
    ///
    /// For an inner class (one with child classes) the kernel keeps `prio` and `quantum` from when it
    /// was a leaf and ignores new values (sch_htb.c `htb_change_class` sets them only while
    /// `cl->level == 0`), so they are not compared: a changed egress rate would never converge.
    public func matches(_ observed: HTBClassSpec, inner: Bool = false) -> Bool {
        classid == observed.classid && parent == observed.parent && rate == observed.rate && ceil == observed.ceil
            && (inner || (priority == observed.priority && quantum == observed.quantum))
            && Self.close(burst, observed.burst, at: rate) && Self.close(cburst, observed.cburst, at: ceil)
    }

    /// The kernel keeps a burst as the time it takes at the rate, in 64 ns psched ticks, so a dump
    /// is off by up to two ticks' worth of bytes (80 B per tick at 10 Gbit/s), or 1 %.
    static func close(_ a: Size, _ b: Size, at rate: Rate) -> Bool {
        let d = a.bytes > b.bytes ? a.bytes - b.bytes : b.bytes - a.bytes
        let ticks = rate.bytesPerSecond / 7_812_500 + 1  // bytes per 128 ns, rounded up
        return d <= max(64, a.bytes / 100, ticks)
    }
}

/// A leaf qdisc: `tc qdisc add dev D parent C <queue>`; its handle is left to the kernel.
public struct LeafQdiscSpec: Sendable, Hashable, Codable {
    public var parent: TCHandle
    public var queue: LeafQueue
    public init(parent: TCHandle, queue: LeafQueue) {
        self.parent = parent
        self.queue = queue
    }
}

/// The classifier filter on the HTB root: `tc filter add dev D parent M: protocol all prio P handle H <kind>`.
public struct FilterSpec: Sendable, Hashable, Codable {
    public var parent: TCHandle
    public var kind: ClassifierKind
    public var priority: UInt16
    public var handle: UInt32

    /// netshape's filters use this priority so they are found again among foreign ones.
    public static let netshapePriority: UInt16 = 0xC0DE & 0x7FFF
    /// Name given to the cls_bpf program (`TCA_BPF_NAME`), how a dump recognises it.
    public static let bpfProgramName = "netshape_classid"
    /// `TCA_BPF_NAME` of the cgroup v2 classifier's filter (its program and map are `netshape_cg2`).
    public static let cgroup2ProgramName = "netshape_cgroup2"

    public init(
        parent: TCHandle, kind: ClassifierKind, priority: UInt16 = FilterSpec.netshapePriority,
        handle: UInt32 = 1
    ) {
        self.parent = parent
        self.kind = kind
        self.priority = priority
        self.handle = handle
    }
}

/// A class's net_cls cgroup: `<root>/netshape/<namespace>/<class>` with `net_cls.classid`.
public struct CgroupSpec: Sendable, Hashable, Codable {
    public var namespace: String
    public var className: String
    public var classid: TCHandle

    public init(namespace: String, className: String, classid: TCHandle) {
        self.namespace = namespace
        self.className = className
        self.classid = classid
    }

    /// Path relative to the net_cls mount, built only from validated names.
    public var relativePath: String { CgroupPaths.class(className, in: namespace) }
}

/// Ingress shaping of a namespace: one HTB class at the ingress rate on the device that carries the
/// namespace's incoming traffic (its veth peer, or an IFB), `tc qdisc add dev PEER root handle M:
/// htb default 1; tc class add … classid M:1 htb rate R ceil R`.
public struct IngressPlan: Sendable, Equatable {
    public var rate: Rate
    public var qdisc: HTBQdiscSpec
    public var rootClass: HTBClassSpec
    public var leaf: LeafQdiscSpec
}

/// One class as the planner laid it out (for rendering, status and membership).
public struct PlannedClass: Sendable, Equatable {
    /// The policy class name, or nil for the implicit default class.
    public var name: String?
    public var spec: HTBClassSpec
    public var leaf: LeafQdiscSpec
    public var match: MatchRules
    public var isDefault: Bool
    /// How its processes reach it.
    public var classification: Classification = .netCls

    /// The class name as shown to users.
    public var displayName: String { name ?? "(default)" }
}

/// Everything one policy namespace should look like in the kernel and cgroupfs.
public struct DesiredNamespace: Sendable, Equatable {
    public var name: String
    public var target: NetnsTarget
    /// Device from the policy; nil = resolve the default-route device when observing.
    public var device: String?
    public var qdisc: HTBQdiscSpec
    /// The HTB root class (`M:1`), holding the namespace egress.
    public var rootClass: HTBClassSpec
    /// Leaf classes in policy order; the implicit default class (if any) last.
    public var classes: [PlannedClass]
    public var filter: FilterSpec
    public var classifier: ClassifierKind
    public var egress: Rate
    public var ingress: Rate?
    /// The ingress tree, when the policy sets `ingress`.
    public var ingressPlan: IngressPlan?
    /// What to create when missing.
    public var provision: Provision?
    /// Classify new sockets of this namespace's comm/user/group classes at creation (the kernel has
    /// the hook and some class can be decided there).
    public var sockCreate = false

    /// The net_cls cgroups of the policy's classes (the implicit default class and classes
    /// classified by cgroup v2 path have none).
    public var cgroups: [CgroupSpec] {
        classes.compactMap { c in
            guard c.classification == .netCls else { return nil }
            return c.name.map { CgroupSpec(namespace: name, className: $0, classid: c.spec.classid) }
        }
    }

    /// The cgroup v2 paths of the classes classified by path, in policy order, without the paths
    /// an earlier rule already covers (a process there belongs to the earlier class, policy.md's
    /// first-match order, and the program's deepest-first walk would otherwise pick the later one).
    public var cgroup2Rules: [Cgroup2Rule] { cgroup2Layout.rules }

    /// The paths an earlier rule shadows, with the class that takes them (for notes).
    public var shadowedCgroup2Paths: [(path: String, className: String, takenBy: String)] {
        cgroup2Layout.shadowed
    }

    var cgroup2Layout: (rules: [Cgroup2Rule], shadowed: [(path: String, className: String, takenBy: String)]) {
        Cgroup2Rule.layout(classes)
    }

    /// All HTB classes, root first (the order they must be created in).
    public var allClasses: [HTBClassSpec] { [rootClass] + classes.map(\.spec) }
}

/// The whole desired state, plus notes the planner wants the user to read (fallbacks it chose).
public struct DesiredState: Sendable, Equatable {
    public var namespaces: [DesiredNamespace]
    public var notes: [String]

    public init(namespaces: [DesiredNamespace], notes: [String]) {
        self.namespaces = namespaces
        self.notes = notes
    }

    public func namespace(_ name: String) -> DesiredNamespace? { namespaces.first { $0.name == name } }
}
