/// Classids already in use for a policy's namespaces and classes, read back from the machine
/// (the `net_cls.classid` of each class cgroup). The planner keeps them, so editing a policy never
/// renumbers a class that already exists, whatever the hash below would pick today.
public struct PreviousAssignments: Sendable, Equatable {
    /// Namespace name → HTB major.
    public var majors: [String: UInt16]
    /// Namespace name → class name → minor.
    public var minors: [String: [String: UInt16]]

    public init(majors: [String: UInt16] = [:], minors: [String: [String: UInt16]] = [:]) {
        self.majors = majors
        self.minors = minors
    }

    public static let none = PreviousAssignments()
}

/// Why a valid policy cannot be planned for this kernel (exit 1: the machine refuses it).
public struct PlanError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Turns a validated policy into the desired kernel and cgroupfs state. Pure: same inputs, same output.
///
/// Numbering: every namespace gets an HTB major and every class a minor from a hash of its name
/// (FNV-1a), probing forward on collision, unless `previous` already holds one. Majors stay below
/// 0x8000 because the kernel hands out automatic qdisc handles from 8000: upwards, and netshape's
/// leaf qdiscs use those. Minor 1 is the root class; minor 2 is always the default class (the one
/// `default` names, or an implicit one), because HTB cannot change its default class in place
/// (sch_htb has no qdisc `change` operation: `tc qdisc change … htb default N` is EINVAL), so the
/// qdisc's `default` never has to change.
public enum Planner {
    /// Lowest and highest minor given to a policy class.
    public static let classMinorRange: ClosedRange<UInt16> = 0x10...0xFFEF
    /// Majors given to namespaces.
    public static let majorRange: ClosedRange<UInt16> = 0x10...0x7FFF
    /// Minor of the HTB root class that carries the namespace egress.
    public static let rootMinor: UInt16 = 1
    /// Minor of the default class (named by `default`, or implicit).
    public static let defaultMinor: UInt16 = 2
    /// The deepest cgroup v2 level the classifier program walks (the root cgroup is level 0).
    public static let cgroup2MaxLevel = 16
    /// The most classes one namespace can hold.
    public static var maxClassesPerNamespace: Int { classMinorRange.count }

    /// Plans `policy` for a kernel with `capabilities`.
    public static func plan(
        _ policy: Policy, capabilities: KernelCapabilities,
        previous: PreviousAssignments = .none
    ) throws -> DesiredState {
        var notes: [String] = []
        let classifier = try chooseClassifier(policy.settings.classifier, capabilities, &notes)
        var usedMajors = Set<UInt16>()
        var namespaces: [DesiredNamespace] = []
        // Previous majors first, so a new namespace can never take an existing one's number.
        for ns in policy.namespaces { if let m = previous.majors[ns.name] { usedMajors.insert(m) } }
        var fallbackNoted = Set<String>()
        for ns in policy.namespaces {
            let major: UInt16
            if let m = previous.majors[ns.name] {
                major = m
            } else {
                major = probe(hash: fnv1a(ns.name), in: majorRange, taken: usedMajors)
                usedMajors.insert(major)
            }
            namespaces.append(
                try planNamespace(
                    ns, major: major, settings: policy.settings, capabilities: capabilities,
                    classifier: classifier, previous: previous.minors[ns.name] ?? [:],
                    notes: &notes, fallbackNoted: &fallbackNoted))
        }
        return DesiredState(namespaces: namespaces, notes: notes)
    }

    static func chooseClassifier(
        _ choice: ClassifierChoice, _ caps: KernelCapabilities,
        _ notes: inout [String]
    ) throws -> ClassifierKind {
        switch choice {
        case .cgroup:
            guard caps.clsCgroup else {
                throw PlanError(
                    "settings.classifier = \"cgroup\" but this kernel has no cls_cgroup (CONFIG_NET_CLS_CGROUP); "
                        + "use \"auto\" or \"bpf\" to classify with cls_bpf and bpf_get_cgroup_classid")
            }
            return .cgroup
        case .bpf:
            guard caps.clsBpf else {
                throw PlanError("settings.classifier = \"bpf\" but this kernel has no cls_bpf (CONFIG_NET_CLS_BPF)")
            }
            return .bpf
        case .auto:
            if caps.clsCgroup { return .cgroup }
            if caps.clsBpf {
                notes.append("this kernel has no cls_cgroup: classifying with cls_bpf (bpf_get_cgroup_classid) instead")
                return .bpf
            }
            throw PlanError(
                "this kernel has neither cls_cgroup nor cls_bpf: netshape cannot classify traffic by cgroup "
                    + "(enable CONFIG_NET_CLS_CGROUP or CONFIG_NET_CLS_BPF)")
        }
    }

    static func planNamespace(
        _ ns: NamespacePolicy, major: UInt16, settings: Settings,
        capabilities: KernelCapabilities, classifier: ClassifierKind,
        previous: [String: UInt16], notes: inout [String],
        fallbackNoted: inout Set<String>
    ) throws -> DesiredNamespace {
        let rootID = TCHandle(major: major, minor: rootMinor)
        let root = HTBClassSpec(
            classid: rootID, parent: TCHandle(major: major, minor: 0), rate: ns.egress, ceil: ns.egress,
            burst: defaultBurst(for: ns.egress), cburst: defaultBurst(for: ns.egress),
            priority: 0, quantum: defaultQuantum(for: ns.egress))

        var minors: [String: UInt16] = [:]
        if let d = ns.defaultClass { minors[d] = defaultMinor }
        for c in ns.classes where minors[c.name] == nil {
            // A class that used to be the default gives minor 2 up to the new default.
            if let m = previous[c.name], m != defaultMinor { minors[c.name] = m }
        }
        var taken = Set(minors.values).union([defaultMinor])
        for c in ns.classes where minors[c.name] == nil {
            let m = probe(hash: fnv1a(c.name), in: classMinorRange, taken: taken)
            minors[c.name] = m
            taken.insert(m)
        }

        var planned: [PlannedClass] = []
        var byPath = false
        for c in ns.classes {
            let id = TCHandle(major: major, minor: minors[c.name] ?? 0)
            let ceil = c.ceil ?? ns.egress
            let spec = HTBClassSpec(
                classid: id, parent: rootID, rate: c.rate, ceil: ceil,
                burst: c.burst ?? defaultBurst(for: c.rate), cburst: c.cburst ?? defaultBurst(for: ceil),
                priority: UInt32(c.priority), quantum: defaultQuantum(for: c.rate))
            let leafChoice = c.leaf ?? ns.leaf ?? settings.leaf
            let queue = try leafQueue(leafChoice, ceil: ceil, capabilities, &notes, &fallbackNoted)
            let path = classPath(c, ns: ns.name, settings: settings, capabilities, &notes)
            byPath = byPath || path == .cgroup2
            planned.append(
                PlannedClass(
                    name: c.name, spec: spec, leaf: LeafQdiscSpec(parent: id, queue: queue),
                    match: c.match, isDefault: c.name == ns.defaultClass, classification: path))
        }
        if byPath, case let count = Cgroup2Rule.layout(planned).rules.count, count > Cgroup2Rule.maxEntries {
            // One map per namespace: past its room the apply would fail half-way, and the daemon on
            // every directory that appears after. net_cls has no such bound.
            notes.append(
                "namespace \(ns.name): its classes name \(count) cgroup v2 paths, more than the classifier's "
                    + "map holds (\(Cgroup2Rule.maxEntries)): they are classified through net_cls (their "
                    + "processes are moved)")
            for i in planned.indices where planned[i].classification == .cgroup2 { planned[i].classification = .netCls }
            byPath = false
        }
        if byPath, !planned.contains(where: { $0.classification == .netCls && !($0.isDefault && $0.match.isEmpty) }),
            let d = planned.firstIndex(where: { $0.isDefault && $0.match.isEmpty })
        {
            // Nothing else needs net_cls: the default class does not either (no cgroup, no mount).
            planned[d].classification = .unmatched
        }
        if ns.defaultClass == nil {
            // No `default`: unmatched traffic still must meet a class, or HTB lets it bypass shaping
            // entirely (measured 9.6 Gbit/s through a 10 Mbit tree). It gets what the classes leave.
            let sum = ns.classes.reduce(UInt64(0)) { $0.addingReportingOverflow($1.rate.bytesPerSecond).partialValue }
            let remainder = ns.egress.bytesPerSecond > sum ? ns.egress.bytesPerSecond - sum : 0
            let rate = Rate(bytesPerSecond: max(remainder, ns.egress.bytesPerSecond / 100, 125))
            let id = TCHandle(major: major, minor: defaultMinor)
            let spec = HTBClassSpec(
                classid: id, parent: rootID, rate: rate, ceil: ns.egress, burst: defaultBurst(for: rate),
                cburst: defaultBurst(for: ns.egress), priority: 7, quantum: defaultQuantum(for: rate))
            let queue = try leafQueue(
                ns.leaf ?? settings.leaf, ceil: ns.egress, capabilities, &notes,
                &fallbackNoted)
            planned.append(
                PlannedClass(
                    name: nil, spec: spec, leaf: LeafQdiscSpec(parent: id, queue: queue),
                    match: MatchRules(), isDefault: true))
        }
        var ingressPlan: IngressPlan?
        if let rate = ns.ingress {
            let q = HTBQdiscSpec(handle: TCHandle(major: major, minor: 0), defaultMinor: 1)
            let cls = HTBClassSpec(
                classid: TCHandle(major: major, minor: 1), parent: q.handle, rate: rate, ceil: rate,
                burst: defaultBurst(for: rate), cburst: defaultBurst(for: rate), priority: 0,
                quantum: defaultQuantum(for: rate))
            let queue = try leafQueue(ns.leaf ?? settings.leaf, ceil: rate, capabilities, &notes, &fallbackNoted)
            ingressPlan = IngressPlan(
                rate: rate, qdisc: q, rootClass: cls, leaf: LeafQdiscSpec(parent: cls.classid, queue: queue))
        }
        var desired = DesiredNamespace(
            name: ns.name, target: ns.netns, device: ns.device ?? (ns.provision != nil ? "eth0" : nil),
            qdisc: HTBQdiscSpec(handle: TCHandle(major: major, minor: 0), defaultMinor: defaultMinor),
            rootClass: root, classes: planned,
            filter: FilterSpec(parent: TCHandle(major: major, minor: 0), kind: byPath ? .cgroup2 : classifier),
            classifier: byPath ? .cgroup2 : classifier, egress: ns.egress, ingress: ns.ingress,
            ingressPlan: ingressPlan,
            provision: ns.provision)
        desired.sockCreate =
            capabilities.sockCreate && settings.sockCreate
            && ns.classes.contains { SockCreate.kernelEvaluable($0.match) }
        return desired
    }

    /// How a class is classified: by cgroup v2 path in the kernel when its rules are cgroup paths
    /// only and the kernel can, else through net_cls (the process moves), with a note saying why.
    static func classPath(
        _ c: ClassPolicy, ns: String, settings: Settings, _ caps: KernelCapabilities, _ notes: inout [String]
    ) -> Classification {
        let m = c.match
        guard m.isCgroupPathsOnly else { return .netCls }
        let via = "namespace \(ns): class \(c.name) is classified through net_cls (its processes are moved)"
        if settings.classifier == .cgroup {
            notes.append("\(via): settings.classifier = \"cgroup\" asks for cls_cgroup, which reads net_cls only")
            return .netCls
        }
        guard caps.cgroup2 else {
            notes.append(
                "\(via): this kernel cannot classify by cgroup v2 path (\(caps.cgroup2Problem ?? "not supported"))")
            return .netCls
        }
        if let deep = m.cgroup.first(where: { $0.split(separator: "/").count > cgroup2MaxLevel }) {
            notes.append("\(via): \(deep) is deeper than the \(cgroup2MaxLevel) levels the classifier walks")
            return .netCls
        }
        return .cgroup2
    }

    /// The leaf queue for `choice` on this kernel.
    static func leafQueue(
        _ choice: LeafChoice, ceil: Rate, _ caps: KernelCapabilities, _ notes: inout [String],
        _ noted: inout Set<String>
    ) throws -> LeafQueue {
        switch choice {
        case .auto:
            if caps.fqCodel { return .fqCodel }
            if noted.insert("fq_codel").inserted {
                notes.append(
                    "this kernel has no fq_codel: leaf queues are byte-limited fifos (bfifo) sized from each class's ceil"
                )
            }
            return .bfifo(limit: bfifoLimit(for: ceil))
        case .fqCodel:
            guard caps.fqCodel else {
                throw PlanError(
                    "leaf = \"fq_codel\" but this kernel has no fq_codel (CONFIG_NET_SCH_FQ_CODEL); use \"auto\" or \"bfifo\""
                )
            }
            return .fqCodel
        case .sfq:
            guard caps.sfq else {
                throw PlanError(
                    "leaf = \"sfq\" but this kernel has no sfq (CONFIG_NET_SCH_SFQ); use \"auto\" or \"bfifo\"")
            }
            return .sfq
        case .bfifo:
            return .bfifo(limit: bfifoLimit(for: ceil))
        case .pfifo:
            // 10 ms of full-size frames at the ceil, at least 16: a packet limit does not bound delay
            // under GSO (64 KiB super-packets), which is why "auto" never picks it.
            let packets = ceil.bytesPerSecond / 100 / 1514
            return .pfifo(limit: UInt32(clamping: max(16, packets)))
        }
    }

    /// Byte limit of a fifo leaf: 10 ms at the class's ceil, never under 128 KiB (two GSO packets;
    /// smaller limits stalled TCP at low rates on the project's machines) nor over 16 MiB.
    public static func bfifoLimit(for ceil: Rate) -> UInt32 {
        let tenMs = ceil.bytesPerSecond / 100
        return UInt32(min(max(tenMs, 128 * 1024), 16 * 1024 * 1024))
    }

    /// HTB burst netshape uses when the policy gives none: 4 ms at the rate, and at least one 64 KiB
    /// GSO packet once the rate can carry one within 200 ms. tc's default (≈ rate/HZ + mtu) is far
    /// too small at high rates and cost 15–25 % of the rate in measurements.
    public static func defaultBurst(for rate: Rate) -> Size {
        let bps = rate.bytesPerSecond
        let floor = min(64 * 1024, max(bps / 5, 1600))
        // bps / 250 is 4 ms without the overflow of bps * 4; capped to what HTB can express.
        return Size(bytes: min(max(bps / 250, floor), HTBLimits.maxBurst(at: rate)))
    }

    /// HTB quantum (bytes a class may send per DRR round when borrowing): 1 ms at the rate, kept
    /// within what the kernel accepts without warning (one frame to 200 000 bytes). Set explicitly
    /// because r2q's rate/10 saturates at 16 Mbit and makes every faster class equal.
    public static func defaultQuantum(for rate: Rate) -> UInt32 {
        UInt32(min(max(rate.bytesPerSecond / 1000, 1514), 200_000))
    }

    static func probe(hash: UInt32, in range: ClosedRange<UInt16>, taken: Set<UInt16>) -> UInt16 {
        let span = UInt32(range.count)
        var offset = hash % span
        for _ in 0..<span {
            let candidate = UInt16(UInt32(range.lowerBound) + offset)
            if !taken.contains(candidate) { return candidate }
            offset = (offset + 1) % span
        }
        // The validator bounds the class count below the range size, so this is unreachable.
        return range.lowerBound
    }

    /// FNV-1a, 32 bit: stable across runs and platforms (Swift's Hasher is seeded per process).
    public static func fnv1a(_ s: String) -> UInt32 {
        var h: UInt32 = 0x811C_9DC5
        for b in s.utf8 {
            h ^= UInt32(b)
            h = h &* 0x0100_0193
        }
        return h
    }
}
