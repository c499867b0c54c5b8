/// Why the machine cannot be converged as asked (exit 1).
public struct DiffError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// The namespace or device is not there.
        case unreachable
        /// The device's root (or ingress) qdisc was configured by someone else.
        case foreignRootQdisc
    }
    public var code: Code
    public var namespace: String
    public var message: String
    public var description: String { message }
}

/// Options of one diff.
public struct DiffOptions: Sendable {
    /// Replace a root qdisc netshape does not own (`apply --force`).
    public var force: Bool
    /// Include process moves (the daemon and `apply` do; `plan` shows them too).
    public var memberships: Bool
    public init(force: Bool = false, memberships: Bool = true) {
        self.force = force
        self.memberships = memberships
    }
}

/// Desired × observed → the ordered operations that make them equal. Pure.
///
/// Order: creations parent-first (qdisc, classes, leaves, filter, cgroups, moves), then removals
/// child-first. Nothing that netshape does not own is ever in a delete: classes are only touched
/// under a root qdisc netshape owns, and cgroups only under `<net_cls>/netshape/<namespace>`.
public enum Differ {
    /// The operations converging `observed` to `desired`. Throws when a namespace is unreachable or a
    /// foreign root qdisc is in the way (without `force`).
    public static func diff(
        _ desired: DesiredState, _ observed: ObservedState,
        matcher: ProcessMatcher, options: DiffOptions = DiffOptions()
    ) throws -> [Operation] {
        var ops: [Operation] = []
        var removals: [Operation] = []
        var needRootDir = observed.cgroups["netshape"] == nil
        for ns in desired.namespaces {
            guard let seen = observed.namespaces[ns.name] else {
                throw DiffError(code: .unreachable, namespace: ns.name, message: "namespace \(ns.name): not observed")
            }
            if let problem = seen.problem {
                throw DiffError(code: .unreachable, namespace: ns.name, message: "namespace \(ns.name): \(problem)")
            }
            let dev = seen.device
            func op(_ a: Operation.Action) -> Operation { Operation(namespace: ns.name, device: dev, action: a) }
            let owned = observed.ownership.namespaces[ns.name]

            // 1–2. The egress tree: root qdisc (ours, the kernel default, or someone else's), classes, leaves.
            let fresh = try diffTree(
                namespace: ns.name, device: dev, link: .namespace, qdisc: ns.qdisc, classes: ns.allClasses,
                leaves: ns.classes.map(\.leaf),
                view: TreeView(root: seen.configuredRoot, classes: seen.classes, qdiscs: seen.qdiscs),
                owns: { owned?.egress?.owns($0, netnsID: seen.netnsID, ifindex: seen.ifindex) == true },
                adoptable: { adoptable($0, ns, seen) }, force: options.force, ops: &ops, removals: &removals)

            // 3. The classifier: exactly one netshape filter of the chosen kind at our priority.
            let ourFilters =
                fresh
                ? []
                : seen.filters.filter {
                    $0.parent == ns.filter.parent && $0.priority == ns.filter.priority
                }
            let good = ourFilters.contains { f in
                f.kind == ns.filter.kind.kind && f.handle == ns.filter.handle
                    && (ns.filter.kind != .bpf || f.bpfName == FilterSpec.bpfProgramName)
            }
            if !good {
                for f in ourFilters {
                    let kind: ClassifierKind = f.kind == "cgroup" ? .cgroup : .bpf
                    ops.append(
                        op(
                            .deleteFilter(
                                FilterSpec(
                                    parent: f.parent, kind: kind, priority: f.priority,
                                    handle: f.handle))))
                }
                ops.append(op(.addFilter(ns.filter)))
            }

            // 4. Ingress: one class at the ingress rate on the veth peer or an IFB.
            if let plan = ns.ingressPlan {
                try diffIngress(ns, plan, seen, owned, options, &ops, &removals)
            } else if let ing = seen.ingress, ing.ifindex != 0, let mine = owned?.ingress {
                // `ingress` was removed from the policy: take down what netshape built for it.
                if let root = ing.configuredRoot,
                    mine.tree?.owns(root, netnsID: ing.netnsID, ifindex: ing.ifindex) == true
                {
                    removals.append(
                        Operation(
                            namespace: ns.name, device: ing.device, link: .ingress,
                            action: .deleteRootQdisc(
                                HTBQdiscSpec(handle: root.handle, defaultMinor: root.htbDefault ?? 0))))
                }
                if ing.placement == .ifb, ing.ingressQdisc != nil, mine.redirectFrom == seen.device {
                    removals.append(
                        Operation(
                            namespace: ns.name, device: seen.device, action: .deleteIngressRedirect(ifb: ing.device)))
                }
                if ing.placement == .ifb, mine.ifb == ing.device {
                    removals.append(Operation(namespace: ns.name, device: ing.device, action: .deleteIFB(ing.device)))
                }
            }

            // 5. cgroups: netshape/, netshape/<ns>/, one per class with its classid.
            let nsDir = "netshape/\(ns.name)"
            if needRootDir {
                ops.append(
                    Operation(namespace: ns.name, action: .createCgroup(path: "netshape", classid: .unspecified)))
                needRootDir = false
            }
            if observed.cgroups[nsDir] == nil {
                ops.append(Operation(namespace: ns.name, action: .createCgroup(path: nsDir, classid: .unspecified)))
            }
            for cg in ns.cgroups {
                if let have = observed.cgroups[cg.relativePath] {
                    if have.classid != cg.classid {
                        ops.append(
                            Operation(
                                namespace: ns.name,
                                action: .setClassID(
                                    path: cg.relativePath, classid: cg.classid, old: have.classid)))
                    }
                } else {
                    ops.append(
                        Operation(
                            namespace: ns.name,
                            action: .createCgroup(
                                path: cg.relativePath,
                                classid: cg.classid)))
                }
            }
            let wantedPaths = Set(ns.cgroups.map(\.relativePath))
            let stale = observed.cgroups.values.filter {
                $0.path.hasPrefix(nsDir + "/") && !wantedPaths.contains($0.path)
            }.sorted(by: deepestFirst)
            for cg in stale {
                // rmdir refuses a populated cgroup: hand its processes back to the root (classid 0 → default class).
                for pid in cg.pids {
                    let comm = seen.processes.first { $0.pid == pid }?.comm ?? "?"
                    removals.insert(
                        Operation(
                            namespace: ns.name,
                            action: .moveProcess(
                                pid: pid, comm: comm, from: cg.path, to: "")), at: 0)
                }
                removals.append(
                    Operation(namespace: ns.name, action: .removeCgroup(path: cg.path, classid: cg.classid)))
            }

            // 6. Processes of this namespace that a rule places in a class they are not in yet.
            //    Processes that match no rule are left where they are: an operator may have placed them
            //    by hand (`classify`, or echo PID > cgroup.procs).
            if options.memberships {
                for p in seen.processes.sorted(by: { $0.pid < $1.pid }) {
                    guard let c = matcher.classify(p, in: ns), let name = c.name else { continue }
                    let path = "\(nsDir)/\(name)"
                    if p.netCls != path {
                        ops.append(
                            Operation(
                                namespace: ns.name,
                                action: .moveProcess(
                                    pid: p.pid, comm: p.comm, from: p.netCls, to: path)))
                    }
                }
            }
        }
        return ops + removals
    }

    /// What is on one device, for comparing an HTB tree.
    struct TreeView {
        var root: ObservedQdisc?
        var classes: [ObservedClass]
        var qdiscs: [ObservedQdisc]
    }

    /// Appends the operations that make one device carry the HTB tree `qdisc` + `classes` + `leaves`.
    /// Returns true when the tree is (re)built from scratch (nothing of it can be reused).
    static func diffTree(
        namespace: String, device: String, link: Operation.Link, qdisc: HTBQdiscSpec,
        classes: [HTBClassSpec], leaves: [LeafQdiscSpec], view: TreeView,
        owns: (ObservedQdisc) -> Bool, adoptable: (ObservedQdisc) -> Bool, force: Bool,
        ops: inout [Operation], removals: inout [Operation]
    ) throws -> Bool {
        func op(_ a: Operation.Action) -> Operation {
            Operation(namespace: namespace, device: device, link: link, action: a)
        }
        var fresh = false
        if let root = view.root {
            if owns(root) || adoptable(root) {
                if root.htbDefault != qdisc.defaultMinor {
                    // sch_htb has no qdisc `change`: a tree with another default class (built by an
                    // older netshape, or adopted) is rebuilt. netshape's own trees never need this.
                    ops.append(
                        op(.deleteRootQdisc(HTBQdiscSpec(handle: root.handle, defaultMinor: root.htbDefault ?? 0))))
                    ops.append(op(.addRootQdisc(qdisc)))
                    fresh = true
                }
            } else if force {
                ops.append(op(.replaceRootQdisc(qdisc, replacing: root)))
                fresh = true
            } else {
                let what =
                    link == .ingress
                    ? "the ingress of namespace \(namespace) is carried by \(device), which" : "device \(device)"
                throw DiffError(
                    code: .foreignRootQdisc, namespace: namespace,
                    message: "namespace \(namespace): \(what) already has a root qdisc netshape did not create "
                        + "(\(root.kind) \(root.handle)); remove it or run apply --force to replace it")
            }
        } else {
            ops.append(op(.addRootQdisc(qdisc)))
            fresh = true
        }
        let major = qdisc.handle.major
        let seenClasses =
            fresh
            ? [:]
            : Dictionary(
                view.classes.filter { $0.spec.classid.major == major }.map { ($0.spec.classid, $0.spec) },
                uniquingKeysWith: { a, _ in a })
        let seenLeaves =
            fresh
            ? [:]
            : Dictionary(
                view.qdiscs.filter { $0.parent.major == major && $0.parent.minor != 0 }.map { ($0.parent, $0) },
                uniquingKeysWith: { a, _ in a })
        for spec in classes {
            if let have = seenClasses[spec.classid] {
                if !spec.matches(have) { ops.append(op(.changeClass(spec, old: have))) }
            } else {
                ops.append(op(.addClass(spec)))
            }
        }
        for leaf in leaves {
            if let have = seenLeaves[leaf.parent] {
                if have.queue != leaf.queue {
                    let old = LeafQdiscSpec(parent: leaf.parent, queue: have.queue ?? .pfifo(limit: 0))
                    ops.append(op(have.queue == nil ? .addLeaf(leaf) : .replaceLeaf(leaf, old: old)))
                }
            } else {
                ops.append(op(.addLeaf(leaf)))
            }
        }
        let wanted = Set(classes.map(\.classid))
        for (id, have) in seenClasses.sorted(by: { $0.key > $1.key }) where !wanted.contains(id) {
            if let leaf = seenLeaves[id], let q = leaf.queue {
                removals.append(op(.deleteLeaf(LeafQdiscSpec(parent: id, queue: q))))
            }
            removals.append(op(.deleteClass(have)))
        }
        return fresh
    }

    static func diffIngress(
        _ ns: DesiredNamespace, _ plan: IngressPlan, _ seen: ObservedNamespace,
        _ owned: OwnershipRecord.Namespace?, _ options: DiffOptions,
        _ ops: inout [Operation], _ removals: inout [Operation]
    ) throws {
        guard let ing = seen.ingress else {
            throw DiffError(
                code: .unreachable, namespace: ns.name,
                message: "namespace \(ns.name): found no device to shape its ingress on")
        }
        if ing.placement == .ifb {
            if ing.ifindex == 0 {
                ops.append(Operation(namespace: ns.name, device: ing.device, action: .createIFB(ing.device)))
            }
            if let q = ing.ingressQdisc {
                let ours = owned?.ingress?.redirectFrom == seen.device
                if !ours && !options.force {
                    throw DiffError(
                        code: .foreignRootQdisc, namespace: ns.name,
                        message:
                            "namespace \(ns.name): device \(seen.device) already has an ingress qdisc netshape did "
                            + "not create (\(q.kind) \(q.handle)); netshape needs it to redirect into \(ing.device)")
                }
            } else {
                ops.append(
                    Operation(namespace: ns.name, device: seen.device, action: .addIngressRedirect(ifb: ing.device)))
            }
        }
        let fresh = ing.ifindex == 0
        _ = try diffTree(
            namespace: ns.name, device: ing.device, link: .ingress, qdisc: plan.qdisc, classes: [plan.rootClass],
            leaves: [plan.leaf],
            view: fresh
                ? TreeView(root: nil, classes: [], qdiscs: [])
                : TreeView(root: ing.configuredRoot, classes: ing.classes, qdiscs: ing.qdiscs),
            owns: { owned?.ingress?.tree?.owns($0, netnsID: ing.netnsID, ifindex: ing.ifindex) == true },
            adoptable: { _ in false }, force: options.force, ops: &ops, removals: &removals)
    }

    /// The provisioning that must happen before anything can be shaped: namespaces, veth pairs,
    /// bridges, addresses and routes that `provision` describes and that are missing. Never touches a
    /// namespace that exists but was not created by netshape.
    public static func provisioning(_ desired: DesiredState, _ observed: ObservedState) -> (
        ops: [Operation], notes: [String]
    ) {
        var ops: [Operation] = []
        var notes: [String] = []
        var bridgesCreated = Set<String>()
        for ns in desired.namespaces {
            guard let prov = ns.provision, case .named(let netns) = ns.target else { continue }
            let seen =
                observed.provision[ns.name]
                ?? ObservedProvision(netnsExists: false, hostDeviceExists: false, bridgeExists: false)
            let ours = observed.ownership.namespaces[ns.name]?.provisioned?.netns == netns
            let dev = ns.device ?? "eth0"
            if seen.netnsExists && !ours {
                notes.append(
                    "namespace \(ns.name): network namespace \(netns) exists and was not created by netshape: provision left it as it is"
                )
                continue
            }
            if seen.netnsExists && seen.hostDeviceExists { continue }
            func host(_ device: String, _ a: Operation.Action) -> Operation {
                Operation(namespace: ns.name, device: device, link: .host, action: a)
            }
            func inside(_ device: String, _ a: Operation.Action) -> Operation {
                Operation(namespace: ns.name, device: device, link: .namespace, action: a)
            }
            if !seen.netnsExists { ops.append(host("", .createNetns(netns))) }
            ops.append(host(prov.hostDevice, .createVeth(host: prov.hostDevice, peer: dev, netns: netns)))
            ops.append(inside("lo", .linkUp))
            if let a = prov.address { ops.append(inside(dev, .addAddress(a))) }
            ops.append(inside(dev, .linkUp))
            if let b = prov.bridge {
                if !seen.bridgeExists && !bridgesCreated.contains(b) {
                    ops.append(host(b, .createBridge(b)))
                    bridgesCreated.insert(b)
                }
                ops.append(host(prov.hostDevice, .attachToBridge(bridge: b)))
            } else if let a = prov.hostAddress {
                ops.append(host(prov.hostDevice, .addAddress(a)))
            }
            ops.append(host(prov.hostDevice, .linkUp))
            if let g = prov.gateway { ops.append(inside(dev, .addDefaultRoute(gateway: g))) }
        }
        return (ops, notes)
    }

    /// A root HTB with our handle and our classifier filter is netshape's even when the ownership
    /// record was lost (it lives on tmpfs with the rest of the state).
    static func adoptable(_ root: ObservedQdisc, _ ns: DesiredNamespace, _ seen: ObservedNamespace) -> Bool {
        root.kind == "htb" && root.handle == ns.qdisc.handle
            && seen.filters.contains { $0.parent == ns.filter.parent && $0.priority == ns.filter.priority }
    }

    static func deepestFirst(_ a: ObservedCgroup, _ b: ObservedCgroup) -> Bool {
        a.path.count > b.path.count || (a.path.count == b.path.count && a.path < b.path)
    }

    /// The operations that remove everything netshape created for `namespaces`: member processes back
    /// to the root cgroup, the class cgroups, the trees netshape owns (deleting a root qdisc removes
    /// every class, leaf and filter beneath it and restores the kernel's default), the IFB and
    /// redirect, and what `provision` created.
    public static func resetOperations(namespaces: [String], _ observed: ObservedState) -> [Operation] {
        var ops: [Operation] = []
        var bridges: [(String, String)] = []
        for name in namespaces {
            let dir = "netshape/\(name)"
            let seen = observed.namespaces[name]
            let owned = observed.ownership.namespaces[name]
            let cgroups = observed.cgroups.values.filter { $0.path == dir || $0.path.hasPrefix(dir + "/") }
                .sorted(by: deepestFirst)
            for cg in cgroups {
                for pid in cg.pids {
                    let comm = seen?.processes.first { $0.pid == pid }?.comm ?? "?"
                    ops.append(
                        Operation(namespace: name, action: .moveProcess(pid: pid, comm: comm, from: cg.path, to: "")))
                }
            }
            for cg in cgroups {
                ops.append(Operation(namespace: name, action: .removeCgroup(path: cg.path, classid: cg.classid)))
            }
            if let seen, seen.problem == nil {
                if let root = seen.configuredRoot, observed.ownership.owns(root, in: seen) {
                    ops.append(
                        Operation(
                            namespace: name, device: seen.device,
                            action: .deleteRootQdisc(
                                HTBQdiscSpec(handle: root.handle, defaultMinor: root.htbDefault ?? 0))))
                }
                if let ing = seen.ingress, ing.ifindex != 0 {
                    if let root = ing.configuredRoot,
                        owned?.ingress?.tree?.owns(root, netnsID: ing.netnsID, ifindex: ing.ifindex) == true
                    {
                        ops.append(
                            Operation(
                                namespace: name, device: ing.device, link: .ingress,
                                action: .deleteRootQdisc(
                                    HTBQdiscSpec(handle: root.handle, defaultMinor: root.htbDefault ?? 0))))
                    }
                    if ing.placement == .ifb, ing.ingressQdisc != nil, owned?.ingress?.redirectFrom == seen.device {
                        ops.append(
                            Operation(
                                namespace: name, device: seen.device, action: .deleteIngressRedirect(ifb: ing.device)))
                    }
                    if ing.placement == .ifb, owned?.ingress?.ifb == ing.device {
                        ops.append(Operation(namespace: name, device: ing.device, action: .deleteIFB(ing.device)))
                    }
                }
            }
            if let prov = owned?.provisioned {
                if let netns = prov.netns, observed.provision[name]?.netnsExists == true {
                    // Deleting the namespace destroys its veth end, and with it the host-side peer.
                    ops.append(Operation(namespace: name, link: .host, action: .deleteNetns(netns)))
                } else if let h = prov.hostDevice, observed.provision[name]?.hostDeviceExists == true {
                    ops.append(Operation(namespace: name, device: h, link: .host, action: .deleteVeth(host: h)))
                }
                if let b = prov.bridge { bridges.append((name, b)) }
            }
        }
        // A bridge goes last, and only when no namespace outside this reset still uses it.
        let leaving = Set(namespaces)
        let stillUsed = Set(
            observed.ownership.namespaces.filter { !leaving.contains($0.key) }.compactMap {
                $0.value.provisioned?.bridge
            })
        var removed = Set<String>()
        for (name, b) in bridges
        where !stillUsed.contains(b) && observed.provision[name]?.bridgeExists == true
            && removed.insert(b).inserted
        {
            ops.append(Operation(namespace: name, device: b, link: .host, action: .deleteBridge(b)))
        }
        return ops
    }
}
