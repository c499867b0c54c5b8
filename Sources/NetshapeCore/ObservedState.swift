/// Counters of a class or qdisc (`TCA_STATS2`).
public struct TCStats: Sendable, Equatable, Codable {
    public var bytes: UInt64
    public var packets: UInt64
    public var drops: UInt64
    public var overlimits: UInt64
    public var backlogBytes: UInt64

    public init(
        bytes: UInt64 = 0, packets: UInt64 = 0, drops: UInt64 = 0, overlimits: UInt64 = 0,
        backlogBytes: UInt64 = 0
    ) {
        self.bytes = bytes
        self.packets = packets
        self.drops = drops
        self.overlimits = overlimits
        self.backlogBytes = backlogBytes
    }
}

/// A qdisc as dumped (`tc qdisc show`).
public struct ObservedQdisc: Sendable, Equatable {
    public var handle: TCHandle
    public var parent: TCHandle
    public var kind: String
    /// HTB `defcls` minor, for kind "htb".
    public var htbDefault: UInt16?
    /// The decoded leaf queue, when the kind is one netshape uses.
    public var queue: LeafQueue?
    public var stats: TCStats

    public init(
        handle: TCHandle, parent: TCHandle, kind: String, htbDefault: UInt16? = nil, queue: LeafQueue? = nil,
        stats: TCStats = TCStats()
    ) {
        self.handle = handle
        self.parent = parent
        self.kind = kind
        self.htbDefault = htbDefault
        self.queue = queue
        self.stats = stats
    }
}

/// An HTB class as dumped (`tc -s class show`).
public struct ObservedClass: Sendable, Equatable {
    public var spec: HTBClassSpec
    public var stats: TCStats
    public init(spec: HTBClassSpec, stats: TCStats = TCStats()) {
        self.spec = spec
        self.stats = stats
    }
}

/// A filter as dumped (`tc filter show`).
public struct ObservedFilter: Sendable, Equatable {
    public var parent: TCHandle
    public var kind: String
    public var priority: UInt16
    public var handle: UInt32
    /// `TCA_BPF_NAME` for kind "bpf".
    public var bpfName: String?
    /// `TCA_BPF_ID`: the id of the program a cls_bpf filter runs.
    public var bpfProgramID: UInt32?

    public init(
        parent: TCHandle, kind: String, priority: UInt16, handle: UInt32, bpfName: String? = nil,
        bpfProgramID: UInt32? = nil
    ) {
        self.parent = parent
        self.kind = kind
        self.priority = priority
        self.handle = handle
        self.bpfName = bpfName
        self.bpfProgramID = bpfProgramID
    }
}

/// One process as read from /proc.
public struct ProcessInfo: Sendable, Equatable {
    public var pid: Int32
    public var comm: String
    /// Target of /proc/PID/exe (nil for kernel threads or when unreadable).
    public var exe: String?
    public var uid: UInt32
    public var gid: UInt32
    /// NUL-separated arguments joined with spaces.
    public var cmdline: String
    /// The cgroup v2 path (`0::/…`), or the name=systemd one where there is no v2 line.
    public var cgroup: String
    /// The net_cls path relative to the hierarchy root ("" = the root cgroup).
    public var netCls: String

    public init(
        pid: Int32, comm: String, exe: String? = nil, uid: UInt32 = 0, gid: UInt32 = 0, cmdline: String = "",
        cgroup: String = "/", netCls: String = ""
    ) {
        self.pid = pid
        self.comm = comm
        self.exe = exe
        self.uid = uid
        self.gid = gid
        self.cmdline = cmdline
        self.cgroup = cgroup
        self.netCls = netCls
    }
}

/// The device that carries a namespace's ingress shaping, as observed.
public struct ObservedIngress: Sendable, Equatable {
    public enum Placement: String, Sendable, Equatable, Codable {
        /// The egress of the namespace device's veth peer in netshape's own (host) namespace.
        case peer
        /// An IFB inside the namespace, fed by an ingress qdisc and a mirred redirect.
        case ifb
    }
    public var placement: Placement
    /// The peer or the IFB.
    public var device: String
    /// Namespace of that device (`st_dev:st_ino`).
    public var netnsID: String
    /// 0 when the device does not exist yet (an IFB to create).
    public var ifindex: Int32
    public var qdiscs: [ObservedQdisc]
    public var classes: [ObservedClass]
    /// For an IFB: the ingress qdisc on the namespace device, if there is one.
    public var ingressQdisc: ObservedQdisc?

    public init(
        placement: Placement, device: String, netnsID: String, ifindex: Int32, qdiscs: [ObservedQdisc] = [],
        classes: [ObservedClass] = [], ingressQdisc: ObservedQdisc? = nil
    ) {
        self.placement = placement
        self.device = device
        self.netnsID = netnsID
        self.ifindex = ifindex
        self.qdiscs = qdiscs
        self.classes = classes
        self.ingressQdisc = ingressQdisc
    }

    /// The configured root qdisc of the device (nil for the kernel default).
    public var configuredRoot: ObservedQdisc? { qdiscs.first { $0.parent == .root && $0.handle != .unspecified } }
}

/// What exists of a namespace's `provision`.
public struct ObservedProvision: Sendable, Equatable {
    public var netnsExists: Bool
    public var hostDeviceExists: Bool
    public var bridgeExists: Bool
    public init(netnsExists: Bool, hostDeviceExists: Bool, bridgeExists: Bool) {
        self.netnsExists = netnsExists
        self.hostDeviceExists = hostDeviceExists
        self.bridgeExists = bridgeExists
    }
}

/// A net_cls cgroup directory under `netshape/`.
public struct ObservedCgroup: Sendable, Equatable {
    /// Relative to the net_cls mount, e.g. `netshape/web/frontend`.
    public var path: String
    public var classid: TCHandle
    public var pids: [Int32]
    /// Names of the cgroup directories inside it (cgroups below a class cgroup are never netshape's).
    public var children: [String]
    public init(path: String, classid: TCHandle, pids: [Int32] = [], children: [String] = []) {
        self.path = path
        self.classid = classid
        self.pids = pids
        self.children = children
    }
}

/// What one policy namespace looks like on the machine now.
public struct ObservedNamespace: Sendable, Equatable {
    public var name: String
    /// Why the namespace or its device could not be observed (nil = it was).
    public var problem: String?
    /// `st_dev:st_ino` of the netns file: identifies the namespace across runs.
    public var netnsID: String
    public var device: String
    public var ifindex: Int32
    /// Every qdisc on the device.
    public var qdiscs: [ObservedQdisc]
    /// Every HTB class on the device.
    public var classes: [ObservedClass]
    /// Every filter attached under the root qdisc.
    public var filters: [ObservedFilter]
    /// Processes whose network namespace is this one.
    public var processes: [ProcessInfo]
    /// Where and how ingress is shaped now (observed only when the policy asks for ingress).
    public var ingress: ObservedIngress?
    /// The namespace as the kernel port resolved it (a container's: its namespace file), for the
    /// operations planned from this observation (`Operation.resolved(in:)`); nil: by name.
    public var target: NetnsTarget?
    /// The namespace's netns cookie (`SO_NETNS_COOKIE`), 0 when the kernel has none.
    public var netnsCookie: UInt64 = 0
    /// The map of netshape's cgroup v2 classifier, when that filter is attached (nil: none, or
    /// it could not be read, which makes the filter one to rebuild).
    public var cgroup2Map: ObservedCgroup2Map?

    public init(
        name: String, problem: String? = nil, netnsID: String = "", device: String = "", ifindex: Int32 = 0,
        qdiscs: [ObservedQdisc] = [], classes: [ObservedClass] = [], filters: [ObservedFilter] = [],
        processes: [ProcessInfo] = [], ingress: ObservedIngress? = nil, target: NetnsTarget? = nil
    ) {
        self.ingress = ingress
        self.target = target
        self.name = name
        self.problem = problem
        self.netnsID = netnsID
        self.device = device
        self.ifindex = ifindex
        self.qdiscs = qdiscs
        self.classes = classes
        self.filters = filters
        self.processes = processes
    }

    /// The root qdisc, unless it is the kernel's default (handle 0: `noqueue`, `mq`, `pfifo_fast`…),
    /// which belongs to nobody and is replaced without ceremony, as `tc qdisc add root` does.
    public var configuredRoot: ObservedQdisc? {
        qdiscs.first { $0.parent == .root && $0.handle != .unspecified }
    }
}

/// The machine as observed for one policy.
public struct ObservedState: Sendable, Equatable {
    public var namespaces: [String: ObservedNamespace]
    /// Every cgroup under `<net_cls>/netshape`, by relative path.
    public var cgroups: [String: ObservedCgroup]
    /// User and group names of the policy's rules, resolved (unknown names are absent).
    public var users: [String: UInt32]
    public var groups: [String: UInt32]
    /// What netshape recorded as its own.
    public var ownership: OwnershipRecord
    /// For namespaces with `provision`: what of it exists now.
    public var provision: [String: ObservedProvision] = [:]
    /// For container targets: where the runtime said the container is (`pid 412, /proc/412/ns/net`).
    public var resolved: [String: String] = [:]
    /// What the machine does that the user should know about (a firewall that blocks a bridge).
    public var notes: [String] = []
    /// The socket-creation program and its map (nil: the kernel has no such hook).
    public var sockCreate: ObservedSockCreate?
    /// Where cgroup2 is mounted (nil: it is not).
    public var cgroup2Mount: String?
    /// The cgroup v2 directories the policy's path rules name that exist, by normalised path.
    public var cgroup2: [String: Cgroup2ID] = [:]
    /// The subtrees under those directories with their processes (asked by `cgroup2Members`).
    public var cgroup2Members: ObservedCgroup2Members?

    public init(
        namespaces: [String: ObservedNamespace] = [:], cgroups: [String: ObservedCgroup] = [:],
        users: [String: UInt32] = [:], groups: [String: UInt32] = [:],
        ownership: OwnershipRecord = OwnershipRecord()
    ) {
        self.namespaces = namespaces
        self.cgroups = cgroups
        self.users = users
        self.groups = groups
        self.ownership = ownership
    }

    /// Classids already assigned to this policy's classes, for the planner to keep.
    public func previousAssignments(for policy: Policy) -> PreviousAssignments {
        var result = PreviousAssignments()
        for ns in policy.namespaces {
            var minors: [String: UInt16] = [:]
            for c in ns.classes {
                guard let cg = cgroups[CgroupPaths.class(c.name, in: ns.name)], cg.classid.raw != 0 else { continue }
                if let m = result.majors[ns.name], m != cg.classid.major { continue }
                result.majors[ns.name] = cg.classid.major
                minors[c.name] = cg.classid.minor
            }
            // Classes classified by cgroup v2 path have no cgroup: their classid is in the map.
            let entries = namespaces[ns.name]?.cgroup2Map?.entries ?? [:]
            // A path an earlier path class covers is that class's (the planner drops it from the
            // later one): the map's classid for it, stale or not, is never the later class's.
            var claimed = Cgroup2Cover()
            for c in ns.classes where c.match.isCgroupPathsOnly {
                let paths = c.match.cgroup.map(Cgroup2Rule.normalize)
                let own = paths.filter { claimed.covering($0) == nil }
                for p in paths { claimed.insert(p, at: 0) }
                guard minors[c.name] == nil else { continue }
                let ids = own.compactMap { cgroup2[$0]?.id }
                // A stale entry (the path's class changed) may hold a minor another class keeps.
                guard let id = ids.first(where: { entries[$0] != nil }), let cid = entries[id],
                    !minors.values.contains(cid.minor)
                else { continue }
                if let m = result.majors[ns.name], m != cid.major { continue }
                result.majors[ns.name] = cid.major
                minors[c.name] = cid.minor
            }
            if result.majors[ns.name] == nil, let owned = ownership.namespaces[ns.name],
                let handle = owned.egress?.handle ?? owned.ingress?.tree?.handle
            {
                result.majors[ns.name] = handle.major
            }
            if !minors.isEmpty { result.minors[ns.name] = minors }
        }
        return result
    }
}
