import NetshapeCore

/// One class in `netshape status`.
public struct ClassStatus: Sendable, Codable, Equatable {
    public var name: String
    public var classid: String
    /// Bits per second.
    public var rate: UInt64
    public var ceil: UInt64
    public var priority: UInt32
    public var leaf: String
    public var bytes: UInt64
    public var packets: UInt64
    public var drops: UInt64
    public var overlimits: UInt64
    /// Bytes queued in the class when it was dumped.
    public var backlog: UInt64 = 0
    /// Bits per second over the sampling interval (nil when sampled once).
    public var throughput: UInt64?
    /// Member processes: of its net_cls cgroup, or for a "cgroup2 path" class the processes at and
    /// below its mapped paths whose new sockets the classifier sends to it (sorted).
    public var pids: [Int32]
    public var isDefault: Bool
    /// False when the class is in the policy but missing from the kernel.
    public var present: Bool
    /// How its processes' packets get into it (`PlannedClass.path`, the words `plan` prints too):
    /// "sock_create" (the kernel sets a new socket's priority), "daemon+net_cls" (moved into its
    /// net_cls cgroup), "net_cls" (no rules: by hand), "cgroup2 path" (the kernel reads the socket's
    /// cgroup v2 membership), "unmatched traffic" (a default class no process is placed in: the
    /// implicit one, or the default beside only cgroup2 path classes), "not applied" (the class is
    /// not in the kernel, so nothing serves it yet: `plan` says what will).
    public var path: String = ClassPath.manual.rawValue
    /// `path` of a class missing from the kernel.
    public static let notApplied = "not applied"
    /// For "cgroup2 path": each path rule with the cgroup id mapped for it (nil: the directory
    /// does not exist, or the map does not hold it).
    public var cgroup2Paths: [Cgroup2PathStatus]? = nil
}

/// One path rule of a class classified by cgroup v2 path, in `netshape status`.
public struct Cgroup2PathStatus: Sendable, Codable, Equatable {
    public var path: String
    /// The directory's cgroup id, when it exists.
    public var id: UInt64?
    /// True when the classifier map sends that id to this class.
    public var mapped: Bool
    /// The class that takes the path instead (an earlier class's path covers it).
    public var shadowedBy: String?

    public init(path: String, id: UInt64?, mapped: Bool, shadowedBy: String? = nil) {
        self.path = path
        self.id = id
        self.mapped = mapped
        self.shadowedBy = shadowedBy
    }
}

/// The cgroup v2 classifier of a namespace, in `netshape status`: the program behind the cls_bpf
/// filter and its map, as the kernel reports them (`bpftool prog show id P`, `bpftool map dump id M`).
public struct Cgroup2ClassifierStatus: Sendable, Codable, Equatable {
    public var name: String
    public var programID: UInt32
    public var mapID: UInt32
    public var entries: Int
}

/// The ingress side of a namespace in `netshape status`.
public struct IngressStatus: Sendable, Codable, Equatable {
    /// The device whose egress carries the namespace's incoming traffic.
    public var device: String
    /// "peer" (the veth peer in the host namespace) or "ifb" (an IFB inside the namespace).
    public var placement: String
    /// Bits per second.
    public var rate: UInt64
    public var bytes: UInt64
    public var packets: UInt64
    public var drops: UInt64
    public var throughput: UInt64?
    public var applied: Bool
}

/// One namespace in `netshape status`.
public struct NamespaceStatus: Sendable, Codable, Equatable {
    public var name: String
    public var netns: String
    public var device: String
    public var handle: String
    /// "cgroup", "bpf", or "none" when no netshape classifier is attached.
    public var classifier: String
    public var egress: UInt64
    public var ingress: UInt64?
    public var applied: Bool
    public var problem: String?
    public var classes: [ClassStatus]
    /// Where and how incoming traffic is shaped (nil without `ingress`).
    public var ingressShaping: IngressStatus?
    /// The policy that applied it (as recorded), when known.
    public var policy: String? = nil
    /// Why this record has nobody to answer for it (policy file gone, namespace gone), with what to run.
    public var orphaned: String? = nil
    /// For a container target: where its runtime says it is (pid and namespace file).
    public var resolved: String? = nil
    /// The veth peer of the namespace's device in the host namespace, when it has one.
    public var hostDevice: String? = nil
    /// The cgroup v2 classifier's program and map, when that filter is attached.
    public var cgroup2Classifier: Cgroup2ClassifierStatus? = nil
}

/// The whole status report.
public struct StatusReport: Sendable, Codable, Equatable {
    public var namespaces: [NamespaceStatus]
    public var interval: Double

    public init(namespaces: [NamespaceStatus], interval: Double) {
        self.namespaces = namespaces
        self.interval = interval
    }
}

extension Engine {
    /// Per namespace and class: configuration, counters, throughput over `interval` seconds
    /// (two dumps `sleep` apart), and member pids.
    public func status(_ policy: Policy, interval: Double, sleep: (Double) -> Void) throws -> StatusReport {
        let caps = try kernel.capabilities()
        let policy = try expandingContainers(policy)
        let counters = ObservationRequest(policy: policy, processes: false)
        var request = counters
        // Path classes have no cgroup of their own: their members are read from the subtrees under
        // their paths, once (the first sample only gives counters).
        request.cgroup2Members = !request.cgroup2Paths.isEmpty
        let first = try kernel.observe(interval > 0 ? counters : request)
        var second = first
        if interval > 0 {
            sleep(interval)
            second = try kernel.observe(request)
        }
        let desired = try Planner.plan(policy, capabilities: caps, previous: second.previousAssignments(for: policy))
        var out: [NamespaceStatus] = []
        for ns in desired.namespaces {
            guard let seen = second.namespaces[ns.name], seen.problem == nil else {
                out.append(
                    NamespaceStatus(
                        name: ns.name, netns: ns.target.description, device: ns.device ?? "?",
                        handle: "\(ns.qdisc.handle)",
                        classifier: "none", egress: ns.egress.bitsPerSecond, ingress: ns.ingress?.bitsPerSecond,
                        applied: false, problem: second.namespaces[ns.name]?.problem ?? "not observed", classes: [],
                        ingressShaping: nil))
                continue
            }
            let before = first.namespaces[ns.name]
            let root = seen.configuredRoot
            let applied = root?.handle == ns.qdisc.handle && root?.kind == "htb"
            let filter = seen.filters.first { $0.parent == ns.filter.parent && $0.priority == ns.filter.priority }
            let paths = Differ.classPaths(ns, second)
            let byPath =
                second.cgroup2Members?.members(
                    map: seen.cgroup2Map?.entries ?? [:], sockTable: Differ.sockTable(ns, second),
                    netnsID: seen.netnsID) ?? [:]
            var classes: [ClassStatus] = []
            for c in ns.classes {
                let now = seen.classes.first { $0.spec.classid == c.spec.classid }
                let then = before?.classes.first { $0.spec.classid == c.spec.classid }
                var tput: UInt64?
                if interval > 0, let n = now, let t = then, n.stats.bytes >= t.stats.bytes {
                    tput = UInt64(Double(n.stats.bytes - t.stats.bytes) * 8 / interval)
                }
                let leaf = seen.qdiscs.first { $0.parent == c.spec.classid }
                let pids =
                    c.classification == .cgroup2
                    ? byPath[c.spec.classid] ?? []
                    : c.name.flatMap { second.cgroups[CgroupPaths.class($0, in: ns.name)]?.pids } ?? []
                classes.append(
                    ClassStatus(
                        name: c.displayName, classid: "\(c.spec.classid)",
                        rate: (now?.spec.rate ?? c.spec.rate).bitsPerSecond,
                        ceil: (now?.spec.ceil ?? c.spec.ceil).bitsPerSecond,
                        priority: now?.spec.priority ?? c.spec.priority,
                        leaf: leaf?.queue?.description ?? leaf?.kind ?? "-",
                        bytes: now?.stats.bytes ?? 0, packets: now?.stats.packets ?? 0,
                        drops: (now?.stats.drops ?? 0) + (leaf?.stats.drops ?? 0),
                        overlimits: now?.stats.overlimits ?? 0,
                        backlog: now?.stats.backlogBytes ?? leaf?.stats.backlogBytes ?? 0,
                        throughput: tput, pids: pids.sorted(), isDefault: c.isDefault, present: now != nil,
                        // No HTB class, nothing serves it: the path it would get is plan's to say.
                        path: now == nil ? ClassStatus.notApplied : c.path(paths),
                        cgroup2Paths: Self.cgroup2Paths(c, ns, seen, second)))
            }
            var ingress: IngressStatus?
            if let plan = ns.ingressPlan, let ing = seen.ingress {
                let now = ing.classes.first { $0.spec.classid == plan.rootClass.classid }
                let then = before?.ingress?.classes.first { $0.spec.classid == plan.rootClass.classid }
                var tput: UInt64?
                if interval > 0, let n = now, let t = then, n.stats.bytes >= t.stats.bytes {
                    tput = UInt64(Double(n.stats.bytes - t.stats.bytes) * 8 / interval)
                }
                let leaf = ing.qdiscs.first { $0.parent == plan.rootClass.classid }
                ingress = IngressStatus(
                    device: ing.device, placement: ing.placement.rawValue, rate: plan.rate.bitsPerSecond,
                    bytes: now?.stats.bytes ?? 0, packets: now?.stats.packets ?? 0,
                    drops: (now?.stats.drops ?? 0) + (leaf?.stats.drops ?? 0), throughput: tput,
                    applied: ing.configuredRoot?.handle == plan.qdisc.handle && now != nil)
            }
            out.append(
                NamespaceStatus(
                    name: ns.name, netns: ns.target.description, device: seen.device, handle: "\(ns.qdisc.handle)",
                    classifier: filter?.kind ?? "none", egress: ns.egress.bitsPerSecond,
                    ingress: ns.ingress?.bitsPerSecond,
                    applied: applied, problem: nil, classes: classes, ingressShaping: ingress,
                    resolved: second.resolved[ns.name],
                    hostDevice: seen.ingress?.placement == .peer ? seen.ingress?.device : nil,
                    cgroup2Classifier: seen.cgroup2Map.map {
                        Cgroup2ClassifierStatus(
                            name: $0.name, programID: $0.programID, mapID: $0.mapID, entries: $0.entries.count)
                    }))
        }
        return StatusReport(namespaces: out, interval: interval)
    }

    /// The path rules of a class classified by cgroup v2 path, each with its id and whether the
    /// map holds it for this class; nil for a net_cls class.
    static func cgroup2Paths(
        _ c: PlannedClass, _ ns: DesiredNamespace, _ seen: ObservedNamespace, _ observed: ObservedState
    ) -> [Cgroup2PathStatus]? {
        guard c.classification == .cgroup2 else { return nil }
        let shadowed = ns.shadowedCgroup2Paths
        return c.match.cgroup.map { raw in
            let p = Cgroup2Rule.normalize(raw)
            let id = observed.cgroup2[p]?.id
            return Cgroup2PathStatus(
                path: "/" + p, id: id, mapped: id.map { seen.cgroup2Map?.entries[$0] == c.spec.classid } ?? false,
                shadowedBy: shadowed.first { $0.path == p && $0.className == c.name }?.takenBy)
        }
    }

    /// Status of recorded entries from the ownership record alone (their policy file is gone, or they
    /// are CNI attachments): what is on the machine, read from the kernel, with `orphaned` set to
    /// `reason`, or to why the namespace is gone.
    public func recordStatus(names: [String], orphaned reason: String?) throws -> [NamespaceStatus] {
        let record = try kernel.loadOwnership()
        let requests = names.map { Self.request(for: $0, record: record.namespaces[$0], policy: nil) }
        let observed = try kernel.observe(ObservationRequest(namespaces: requests, processes: false))
        return names.map { name in
            let entry = record.namespaces[name]
            let target = entry?.target?.description ?? "?"
            let hint = "run netshape reset \(entry?.policy ?? "PATH") or netshape reset --all"
            guard let seen = observed.namespaces[name], seen.problem == nil else {
                let problem = observed.namespaces[name]?.problem ?? "not observed"
                return NamespaceStatus(
                    name: name, netns: target, device: entry?.egress?.device ?? entry?.device ?? "?",
                    handle: entry?.egress.map { "\($0.handle)" } ?? "-", classifier: "none", egress: 0, ingress: nil,
                    applied: false, problem: problem, classes: [], ingressShaping: nil, policy: entry?.policy,
                    orphaned: "\(reason ?? "its namespace is gone: \(problem)"): \(hint)")
            }
            let tree = entry?.egress
            let root = seen.configuredRoot
            let applied = root.map { tree?.owns($0, netnsID: seen.netnsID, ifindex: seen.ifindex) == true } ?? false
            let major = tree?.handle.major
            let byClassid = Dictionary(
                observed.cgroups.values.filter { $0.path.hasPrefix(CgroupPaths.namespace(name) + "/") }
                    .map { ($0.classid, $0) }, uniquingKeysWith: { a, _ in a })
            // Only the classes netshape made; the default one is the qdisc's `default` minor.
            let defaultMinor = root?.htbDefault
            let classes = seen.classes.filter {
                $0.spec.classid.major == major && $0.spec.classid.minor != 1 && tree?.created($0.spec.classid) == true
            }
            .sorted { $0.spec.classid < $1.spec.classid }
            .map { c in
                let cg = byClassid[c.spec.classid]
                let leaf = seen.qdiscs.first { $0.parent == c.spec.classid }
                let isDefault = c.spec.classid.minor == defaultMinor
                return ClassStatus(
                    name: cg.map { String($0.path.split(separator: "/").last ?? "") }
                        ?? (isDefault ? "(default)" : "(no cgroup)"),
                    classid: "\(c.spec.classid)", rate: c.spec.rate.bitsPerSecond, ceil: c.spec.ceil.bitsPerSecond,
                    priority: c.spec.priority, leaf: leaf?.queue?.description ?? leaf?.kind ?? "-",
                    bytes: c.stats.bytes, packets: c.stats.packets,
                    drops: c.stats.drops + (leaf?.stats.drops ?? 0), overlimits: c.stats.overlimits,
                    throughput: nil, pids: (cg?.pids ?? []).sorted(), isDefault: isDefault, present: true)
            }
            let egress = seen.classes.first {
                $0.spec.classid == tree.map { TCHandle(major: $0.handle.major, minor: 1) }
            }
            let filter = seen.filters.first { $0.priority == FilterSpec.netshapePriority }
            return NamespaceStatus(
                name: name, netns: target, device: seen.device, handle: tree.map { "\($0.handle)" } ?? "-",
                classifier: filter?.kind ?? "none", egress: egress?.spec.rate.bitsPerSecond ?? 0, ingress: nil,
                applied: applied, problem: nil, classes: classes, ingressShaping: nil, policy: entry?.policy,
                orphaned: reason.map { "\($0): \(hint)" })
        }
    }
}
