/// The objects netshape created, recorded before it creates them, so that `apply`, `reset` and
/// `--force` only ever delete what is netshape's.
///
/// The record stands on its own: each entry names its policy, its namespace target and device,
/// and every object created for it (trees, class ids, cgroups, provisioned links). `reset` of a
/// policy whose file is gone, `reset --all` and bare `status` work from the record alone.
public struct OwnershipRecord: Sendable, Equatable, Codable {
    /// An HTB tree netshape built on one device.
    public struct Tree: Sendable, Equatable, Codable {
        /// `st_dev:st_ino` of the namespace the device lives in.
        public var netnsID: String
        public var device: String
        public var ifindex: Int32
        public var handle: TCHandle
        /// The classes netshape created in this tree (nil: a record written before classes were
        /// recorded; every class of the tree's major is then taken as netshape's).
        public var classes: [TCHandle]?

        public init(netnsID: String, device: String, ifindex: Int32, handle: TCHandle, classes: [TCHandle]? = []) {
            self.netnsID = netnsID
            self.device = device
            self.ifindex = ifindex
            self.handle = handle
            self.classes = classes
        }

        /// True when `root` on that device is this tree's root.
        public func owns(_ root: ObservedQdisc, netnsID: String, ifindex: Int32) -> Bool {
            // ifindex 0 / an empty id: recorded before its device (an IFB, a provisioned veth) existed, by a
            // run that died before it could fill them in (SIGKILL): the handle alone still says it is ours.
            root.kind == "htb" && root.handle == handle && (self.ifindex == ifindex || self.ifindex == 0)
                && (self.netnsID == netnsID || self.netnsID.isEmpty)
        }

        /// True when netshape created class `id` in this tree.
        public func created(_ id: TCHandle) -> Bool {
            guard let classes else { return id.major == handle.major }
            return classes.contains(id)
        }
    }

    /// Ingress shaping: the tree on the peer or IFB, and what was created to redirect into an IFB.
    public struct Ingress: Sendable, Equatable, Codable {
        public var tree: Tree?
        /// The IFB netshape created inside the namespace.
        public var ifb: String?
        /// The device whose ingress qdisc (and redirect) netshape added.
        public var redirectFrom: String?

        public init(tree: Tree? = nil, ifb: String? = nil, redirectFrom: String? = nil) {
            self.tree = tree
            self.ifb = ifb
            self.redirectFrom = redirectFrom
        }

        public var isEmpty: Bool { tree == nil && ifb == nil && redirectFrom == nil }
    }

    /// What `provision` created.
    public struct Provisioned: Sendable, Equatable, Codable {
        /// The `ip netns` name netshape created.
        public var netns: String?
        /// The host-side veth netshape created.
        public var hostDevice: String?
        /// The bridge netshape created (removed when no provisioned namespace uses it any more).
        public var bridge: String?

        public init(netns: String? = nil, hostDevice: String? = nil, bridge: String? = nil) {
            self.netns = netns
            self.hostDevice = hostDevice
            self.bridge = bridge
        }

        public var isEmpty: Bool { netns == nil && hostDevice == nil && bridge == nil }
    }

    public struct Namespace: Sendable, Equatable, Codable {
        /// Absolute path of the policy that created it (`cni:ID` for a CNI attachment).
        public var policy: String
        /// How to find the namespace again without the policy (nil: an older record).
        public var target: NetnsTarget?
        /// The device the policy named (nil: the default-route device).
        public var device: String?
        public var egress: Tree?
        public var ingress: Ingress?
        public var provisioned: Provisioned?
        /// The cgroup v2 classifier netshape attached to the egress tree: program and map of this
        /// name, held by the cls_bpf filter (nothing pinned, so they go with the filter or the tree).
        public var cgroup2Classifier: String?
        /// net_cls cgroups netshape created for this entry, relative to the hierarchy (nil: an
        /// older record; the class cgroups under `netshape/<name>` are then taken as netshape's).
        public var cgroups: [String]?
        /// The netns cookie under which netshape put this entry's rules in the sock_create map.
        public var sockCookie: UInt64?

        public init(
            policy: String, target: NetnsTarget? = nil, device: String? = nil, egress: Tree? = nil,
            ingress: Ingress? = nil, provisioned: Provisioned? = nil, cgroups: [String]? = []
        ) {
            self.policy = policy
            self.target = target
            self.device = device
            self.egress = egress
            self.ingress = ingress
            self.provisioned = provisioned
            self.cgroups = cgroups
        }

        /// Nothing of it is left on the machine.
        public var isEmpty: Bool {
            egress == nil && (ingress?.isEmpty ?? true) && (provisioned?.isEmpty ?? true) && (cgroups ?? []).isEmpty
                && sockCookie == nil
                && cgroup2Classifier == nil
        }

        /// True when netshape created the cgroup at `path` for this entry.
        public func created(cgroup path: String, entry name: String) -> Bool {
            guard let cgroups else {
                return path == CgroupPaths.namespace(name) || path.hasPrefix(CgroupPaths.namespace(name) + "/")
            }
            return cgroups.contains(path)
        }
    }

    public var namespaces: [String: Namespace]
    /// netshape attached its sock_create program on the cgroup2 root (one for the whole host).
    public var sockCreate: Bool?
    public init(namespaces: [String: Namespace] = [:], sockCreate: Bool? = nil) {
        self.namespaces = namespaces
        self.sockCreate = sockCreate
    }

    /// True when an entry other than those in `except` still has rules in the sock_create map.
    public func sockCreateUsed(except: Set<String>) -> Bool {
        namespaces.contains { !except.contains($0.key) && $0.value.sockCookie != nil }
    }

    /// True when `root` on `observed`'s device is the HTB qdisc netshape created there.
    public func owns(_ root: ObservedQdisc, in observed: ObservedNamespace) -> Bool {
        namespaces[observed.name]?.egress?.owns(root, netnsID: observed.netnsID, ifindex: observed.ifindex) == true
    }

    /// The entry (other than `except`) whose recorded egress or ingress tree is `root` on the device
    /// `ifindex` of namespace `netnsID`: that device is already shaped by someone else's entry.
    public func claimant(of root: ObservedQdisc, netnsID: String, ifindex: Int32, except: String) -> String? {
        namespaces.filter { $0.key != except }.first { _, e in
            e.egress?.owns(root, netnsID: netnsID, ifindex: ifindex) == true
                || e.ingress?.tree?.owns(root, netnsID: netnsID, ifindex: ifindex) == true
        }?.key
    }

    /// The record's policies, each with its entry names, sorted.
    public var policies: [(policy: String, names: [String])] {
        Dictionary(grouping: namespaces.keys, by: { namespaces[$0]!.policy })
            .map { ($0.key, $0.value.sorted()) }.sorted { $0.policy < $1.policy }
    }
}

/// Where a policy entry's net_cls cgroups live: `<net_cls>/netshape/<namespace>/<class>`, built
/// only from validated names (policy.md: `../` never reaches the filesystem).
public enum CgroupPaths {
    /// netshape's top directory in the hierarchy.
    public static let top = "netshape"
    /// The directory of one namespace entry.
    public static func namespace(_ name: String) -> String { "\(top)/\(name)" }
    /// The cgroup of one class.
    public static func `class`(_ className: String, in namespace: String) -> String {
        "\(top)/\(namespace)/\(className)"
    }
}

/// The record's bookkeeping: what the engine's operations create and remove, written before they
/// run (so a crash mid-apply leaves nothing netshape made unowned) and forgotten after a reset.
extension OwnershipRecord {
    /// Writes into the record what provisioning operations will create (netns, veth, bridge).
    public mutating func recordProvisioning(_ ops: [Operation], policyPath: String) {
        for op in ops {
            var entry = namespaces[op.namespace] ?? OwnershipRecord.Namespace(policy: policyPath)
            var prov = entry.provisioned ?? OwnershipRecord.Provisioned()
            switch op.action {
            case .createNetns(let n): prov.netns = n
            case .createVeth(let h, _, _): prov.hostDevice = h
            case .createBridge(let b): prov.bridge = b
            case .attachToBridge(let b):
                // Sharing a bridge netshape created (for another namespace, maybe earlier in this
                // very loop) makes this namespace one of its users: the last one reset removes it.
                let netshapeMade = namespaces.values.contains { $0.provisioned?.bridge == b }
                if prov.bridge == nil && netshapeMade { prov.bridge = b }
            default: continue
            }
            entry.provisioned = prov
            namespaces[op.namespace] = entry
        }
    }

    /// Writes into the record, before the operations run, what they will create (and forget what they
    /// delete): trees, the classes in them, cgroups, IFB and redirect, with the entry's target.
    public mutating func recordShaping(
        _ ops: [Operation], _ observed: ObservedState, _ policy: Policy, policyPath: String
    ) {
        var recordedCgroups: [String: Set<String>] = [:]  // a linear search per cgroup is quadratic on big trees
        for op in ops {
            if case .attachSockCreate = op.action { sockCreate = true }
            guard let seen = observed.namespaces[op.namespace] else { continue }
            var entry = namespaces[op.namespace] ?? Self.newEntry(op.namespace, policy, policyPath)
            switch (op.action, op.link) {
            case (.addRootQdisc(let q), .namespace), (.replaceRootQdisc(let q, _), .namespace):
                entry.egress = OwnershipRecord.Tree(
                    netnsID: seen.netnsID, device: seen.device, ifindex: seen.ifindex, handle: q.handle)
            case (.deleteRootQdisc, _), (.deleteClass, _), (.deleteFilter, _), (.deleteIFB, _),
                (.deleteIngressRedirect, _):
                // What a delete drops is written once, in `forget` (reset's bookkeeping too).
                namespaces[op.namespace] = entry
                forget(op)
                continue
            case (.addRootQdisc(let q), .ingress), (.replaceRootQdisc(let q, _), .ingress):
                let ing = seen.ingress
                var i = entry.ingress ?? OwnershipRecord.Ingress()
                i.tree = OwnershipRecord.Tree(
                    netnsID: ing?.netnsID ?? "", device: op.device, ifindex: ing?.ifindex ?? 0, handle: q.handle)
                entry.ingress = i
            case (.addClass(let c), .namespace):
                if entry.egress?.classes?.contains(c.classid) == false { entry.egress?.classes?.append(c.classid) }
            case (.addClass(let c), .ingress):
                if entry.ingress?.tree?.classes?.contains(c.classid) == false {
                    entry.ingress?.tree?.classes?.append(c.classid)
                }
            case (.addFilter(let f), .namespace) where f.kind == .cgroup2:
                entry.cgroup2Classifier = Cgroup2Entry.objectName(namespace: op.namespace)
            case (.createCgroup(let path, _), _) where path != CgroupPaths.top:
                let fresh = recordedCgroups[op.namespace, default: Set(entry.cgroups ?? [])].insert(path).inserted
                if fresh { entry.cgroups?.append(path) }
            case (.removeCgroup(let path, _), _):
                entry.cgroups?.removeAll { $0 == path }
                recordedCgroups[op.namespace]?.remove(path)
            case (.createIFB(let name), _):
                var i = entry.ingress ?? OwnershipRecord.Ingress()
                i.ifb = name
                entry.ingress = i
            case (.addIngressRedirect, _):
                var i = entry.ingress ?? OwnershipRecord.Ingress()
                i.redirectFrom = op.device
                entry.ingress = i
            case (.putSockRule(let k, _, _), _):
                entry.sockCookie = k.cookie
            default: continue
            }
            namespaces[op.namespace] = entry
        }
    }

    /// A new entry for namespace `name` of `policy`, standing on its own (policy, target, device).
    public static func newEntry(_ name: String, _ policy: Policy, _ policyPath: String) -> OwnershipRecord.Namespace {
        let ns = policy.namespace(name)
        return OwnershipRecord.Namespace(policy: policyPath, target: ns?.netns, device: ns?.device)
    }

    /// Drops from the record what performed reset operations removed; the cgroups in one pass per
    /// entry (one search of the list per removed cgroup is quadratic on a big tree).
    public mutating func forget(_ ops: [Operation]) {
        var removed: [String: Set<String>] = [:]
        for op in ops {
            if case .removeCgroup(let path, _) = op.action {
                removed[op.namespace, default: []].insert(path)
            } else {
                forget(op)
            }
        }
        for (name, paths) in removed { namespaces[name]?.cgroups?.removeAll { paths.contains($0) } }
    }

    /// Drops from the record what a performed delete removed (reset's, and shaping's via `recordShaping`).
    public mutating func forget(_ op: Operation) {
        if case .detachSockCreate = op.action { sockCreate = nil }
        guard var e = namespaces[op.namespace] else { return }
        switch (op.action, op.link) {
        case (.removeCgroup(let path, _), _): e.cgroups?.removeAll { $0 == path }
        case (.deleteRootQdisc, .namespace):
            // The filter went with the tree, and the classifier's program and map with the filter.
            e.egress = nil
            e.cgroup2Classifier = nil
        case (.deleteFilter(let f), .namespace) where f.kind == .cgroup2: e.cgroup2Classifier = nil
        case (.deleteRootQdisc, .ingress): e.ingress?.tree = nil
        case (.deleteClass(let c), .namespace): e.egress?.classes?.removeAll { $0 == c.classid }
        case (.deleteClass(let c), .ingress): e.ingress?.tree?.classes?.removeAll { $0 == c.classid }
        case (.deleteIngressRedirect, _): e.ingress?.redirectFrom = nil
        case (.deleteIFB, _): e.ingress?.ifb = nil
        case (.deleteNetns, _), (.deleteVeth, _):
            e.provisioned?.netns = nil
            e.provisioned?.hostDevice = nil
        case (.deleteBridge, _): e.provisioned?.bridge = nil
        case (.deleteSockRule, _): e.sockCookie = nil
        default: break
        }
        namespaces[op.namespace] = e
    }
}
