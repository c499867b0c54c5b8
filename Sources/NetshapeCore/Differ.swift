/// Why the machine cannot be converged as asked (exit 1).
public struct DiffError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// The namespace or device is not there.
        case unreachable
        /// The device's root (or ingress) qdisc was configured by someone else.
        case foreignRootQdisc
        /// The entry's name, or its device, already belongs to another policy's entry.
        case claimed
        /// Two entries of one policy resolve to the same device of the same namespace.
        case duplicateTarget
    }
    public var code: Code
    public var namespace: String
    public var message: String
    public var description: String { message }

    public init(code: Code, namespace: String, message: String) {
        self.code = code
        self.namespace = namespace
        self.message = message
    }
}

/// Options of one diff.
public struct DiffOptions: Sendable {
    /// Replace a root qdisc netshape does not own (`apply --force`).
    public var force: Bool
    /// Include process moves (the daemon and `apply` do; `plan` shows them too).
    public var memberships: Bool
    /// Entries this apply drops from the policy (their sock_create rules are planned with the rest).
    public var retiring: Set<String>
    public init(force: Bool = false, memberships: Bool = true, retiring: Set<String> = []) {
        self.force = force
        self.memberships = memberships
        self.retiring = retiring
    }
}

/// Desired × observed → the ordered operations that make them equal. Pure.
///
/// Order: creations parent-first (qdisc, classes, leaves, filter, cgroups, moves), then removals
/// child-first. Nothing that netshape did not create is ever in a delete: classes only when the
/// ownership record says netshape created them, cgroups likewise; foreign objects found inside
/// netshape's trees and directories are left alone and named in a note.
public enum Differ {
    /// The operations converging `observed` to `desired`. Throws when a namespace is unreachable or a
    /// foreign root qdisc is in the way (without `force`).
    public static func diff(
        _ desired: DesiredState, _ observed: ObservedState,
        matcher: ProcessMatcher, options: DiffOptions = DiffOptions()
    ) throws -> [Operation] {
        var notes: [String] = []
        return try diff(desired, observed, matcher: matcher, options: options, notes: &notes)
    }

    /// As `diff`, also appending to `notes` what was left alone and why.
    public static func diff(
        _ desired: DesiredState, _ observed: ObservedState,
        matcher: ProcessMatcher, options: DiffOptions = DiffOptions(), notes: inout [String]
    ) throws -> [Operation] {
        var ops: [Operation] = []
        var removals: [Operation] = []
        var needRootDir = observed.cgroups[CgroupPaths.top] == nil
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
            let tree = owned?.egress.flatMap { $0.netnsID == seen.netnsID && $0.ifindex == seen.ifindex ? $0 : nil }

            // 1–2. The egress tree: root qdisc (ours, the kernel default, or someone else's), classes, leaves.
            let fresh = try diffTree(
                TreeTarget(namespace: ns.name, device: dev, link: .namespace),
                TreeWant(qdisc: ns.qdisc, classes: ns.allClasses, leaves: ns.classes.map(\.leaf)),
                TreeView(root: seen.configuredRoot, classes: seen.classes, qdiscs: seen.qdiscs),
                owns: { owned?.egress?.owns($0, netnsID: seen.netnsID, ifindex: seen.ifindex) == true },
                adoptable: { adoptable($0, ns, seen) }, created: { tree?.created($0) ?? true },
                force: options.force, ops: &ops, removals: &removals, notes: &notes)

            // 3. The classifier: exactly one netshape filter of the chosen kind at our priority.
            //    Filters at other priorities are someone else's and stay.
            let ourFilters =
                fresh
                ? []
                : seen.filters.filter {
                    $0.parent == ns.filter.parent && $0.priority == ns.filter.priority
                }
            // The cgroup v2 classifier is only good with a map netshape can read and update.
            let good = ourFilters.contains { f in
                f.kind == ns.filter.kind.kind && f.handle == ns.filter.handle
                    && (ns.filter.kind == .cgroup || f.bpfName == ns.filter.kind.filterName)
                    && (ns.filter.kind != .cgroup2 || seen.cgroup2Map != nil)
            }
            if !good {
                for f in ourFilters {
                    let kind: ClassifierKind =
                        f.kind == "cgroup" ? .cgroup : f.bpfName == FilterSpec.cgroup2ProgramName ? .cgroup2 : .bpf
                    // The map goes with the filter: emptied first, so that undoing this run (the
                    // filter re-added with a fresh map) puts every entry back.
                    if kind == .cgroup2, let map = seen.cgroup2Map {
                        for (id, classid) in map.entries.sorted(by: { $0.key < $1.key }) {
                            ops.append(op(.unmapCgroup(Cgroup2Entry(path: "(id \(id))", id: id, classid: classid))))
                        }
                    }
                    ops.append(
                        op(
                            .deleteFilter(
                                FilterSpec(
                                    parent: f.parent, kind: kind, priority: f.priority,
                                    handle: f.handle))))
                }
                ops.append(op(.addFilter(ns.filter)))
            }
            if ns.filter.kind == .cgroup2 {
                diffCgroup2Map(
                    ns, have: good ? seen.cgroup2Map?.entries ?? [:] : [:], observed, op, &ops, &removals, &notes)
            }
            if !fresh {
                let foreign = seen.filters.filter {
                    $0.parent.major == ns.qdisc.handle.major && $0.priority != ns.filter.priority
                }
                for f in foreign {
                    notes.append(
                        "namespace \(ns.name): filter \(f.kind) prio \(f.priority) on \(dev) was not created by "
                            + "netshape and is left as it is (it may steer traffic past netshape's classifier)")
                }
            }

            // 4. Ingress: one class at the ingress rate on the veth peer or an IFB.
            if let plan = ns.ingressPlan {
                try diffIngress(ns, plan, seen, owned, options, &ops, &removals, &notes)
            } else if let ing = seen.ingress, ing.ifindex != 0, let mine = owned?.ingress {
                // `ingress` was removed from the policy: take down what netshape built for it.
                if let root = ing.configuredRoot,
                    mine.tree?.owns(root, netnsID: ing.netnsID, ifindex: ing.ifindex) == true
                {
                    removals += teardown(
                        root, TreeView(root: root, classes: ing.classes, qdiscs: ing.qdiscs),
                        TreeTarget(namespace: ns.name, device: ing.device, link: .ingress))
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

            // 5–6. cgroups and memberships.
            diffCgroups(
                ns, seen, observed, owned, matcher: matcher, options: options, needRootDir: &needRootDir, ops: &ops,
                removals: &removals, notes: &notes)
        }
        // 7. The sock_create map: rules after the classes they name exist, and gone before them.
        let sock = diffSockCreate(
            desired, observed, matcher: matcher, retiring: options.retiring, notes: &notes)
        return ops + sock.ops + sock.removals + removals
    }

    /// A rule written as a file-system path (copied from `ls /sys/fs/cgroup/…`) names a directory
    /// below the mount that nobody will make: say what was meant.
    static func absolutePathHint(_ path: String, mount: String?) -> String {
        guard let mount else { return "" }
        let full = "/" + path
        if full.hasPrefix(mount + "/") {
            return "; paths are relative to the cgroup2 mount: for \(full) write \"\(full.dropFirst(mount.count + 1))\""
        }
        if full.hasPrefix("/sys/fs/cgroup/") {
            return "; paths are relative to the cgroup2 mount \(mount), and \(full) is not below it (a cgroup v1 "
                + "hierarchy's directory cannot be a cgroup v2 rule)"
        }
        return ""
    }

    /// The cgroup v2 classifier's map: one entry per existing directory a path rule names (its id →
    /// the class's classid), changed in place; ids no rule names any more (a directory renamed,
    /// removed or re-created gets a new id) are deleted. The filter is never rebuilt for this.
    static func diffCgroup2Map(
        _ ns: DesiredNamespace, have: [UInt64: TCHandle], _ observed: ObservedState,
        _ op: (Operation.Action) -> Operation, _ ops: inout [Operation], _ removals: inout [Operation],
        _ notes: inout [String]
    ) {
        for s in ns.shadowedCgroup2Paths {
            notes.append(
                "namespace \(ns.name): class \(s.className)'s cgroup /\(s.path) is inside a path of class "
                    + "\(s.takenBy), which comes first in the policy and takes it")
        }
        var wanted: [UInt64: Cgroup2Entry] = [:]
        for rule in ns.cgroup2Rules {
            guard let id = observed.cgroup2[rule.path] else {
                notes.append(
                    "namespace \(ns.name): class \(rule.className): cgroup /\(rule.path) does not exist (yet) "
                        + (observed.cgroup2Mount.map { "under \($0)" } ?? "(cgroup2 is not mounted)")
                        + ": mapped when it appears (the daemon watches for it; otherwise the next apply)"
                        + absolutePathHint(rule.path, mount: observed.cgroup2Mount))
                continue
            }
            guard wanted[id.id] == nil else { continue }
            let e = Cgroup2Entry(path: rule.path, id: id.id, classid: rule.classid)
            wanted[id.id] = e
            if let old = have[id.id] {
                if old != rule.classid { ops.append(op(.mapCgroup(e, old: old))) }
            } else {
                ops.append(op(.mapCgroup(e, old: nil)))
            }
        }
        for (id, classid) in have.sorted(by: { $0.key < $1.key }) where wanted[id] == nil {
            removals.append(
                op(.unmapCgroup(Cgroup2Entry(path: "(id \(id), no rule names it now)", id: id, classid: classid))))
        }
    }

    /// cgroups (netshape/, netshape/<ns>/, one per class with its classid), the removal of the class
    /// cgroups netshape made that the policy no longer has, and process moves.
    static func diffCgroups(
        _ ns: DesiredNamespace, _ seen: ObservedNamespace, _ observed: ObservedState,
        _ owned: OwnershipRecord.Namespace?, matcher: ProcessMatcher, options: DiffOptions,
        needRootDir: inout Bool, ops: inout [Operation], removals: inout [Operation], notes: inout [String]
    ) {
        let nsDir = CgroupPaths.namespace(ns.name)
        // No class needs net_cls (all are classified by cgroup v2 path): no directory, no mount.
        let needsNetCls = !ns.cgroups.isEmpty || observed.cgroups[nsDir] != nil
        if needRootDir && needsNetCls {
            ops.append(
                Operation(namespace: ns.name, action: .createCgroup(path: CgroupPaths.top, classid: .unspecified)))
            needRootDir = false
        }
        if observed.cgroups[nsDir] == nil && needsNetCls {
            ops.append(Operation(namespace: ns.name, action: .createCgroup(path: nsDir, classid: .unspecified)))
        }
        // Each path built once: on a 1000-class tree the string building is most of this loop.
        let wanted = ns.cgroups.map { ($0, $0.relativePath) }
        for (cg, path) in wanted {
            if let have = observed.cgroups[path] {
                if have.classid != cg.classid {
                    ops.append(
                        Operation(
                            namespace: ns.name, action: .setClassID(path: path, classid: cg.classid, old: have.classid))
                    )
                }
                for child in have.children {
                    notes.append(
                        "namespace \(ns.name): cgroup \(path)/\(child) was not created by netshape and "
                            + "is left as it is (its processes keep their own classid)")
                }
            } else {
                ops.append(Operation(namespace: ns.name, action: .createCgroup(path: path, classid: cg.classid)))
            }
        }
        // Processes of this namespace that a rule places in a class they are not in yet. Processes that
        // match no rule are left where they are: an operator may have placed them by hand (`classify`,
        // or echo PID > cgroup.procs).
        var moved = Set<Int32>()
        if options.memberships {
            for p in seen.processes.sorted(by: { $0.pid < $1.pid }) {
                guard let c = matcher.classify(p, in: ns), let name = c.name else { continue }
                let path = CgroupPaths.class(name, in: ns.name)
                if p.netCls != path {
                    moved.insert(p.pid)
                    ops.append(
                        Operation(
                            namespace: ns.name, action: .moveProcess(pid: p.pid, comm: p.comm, from: p.netCls, to: path)
                        ))
                }
            }
        }
        let wantedPaths = Set(wanted.map(\.1))
        let inside = nsDir + "/"
        let stale = observed.cgroups.values.filter {
            $0.path.hasPrefix(inside) && !wantedPaths.contains($0.path)
        }.sorted(by: deepestFirst)
        for cg in stale {
            guard owned?.created(cgroup: cg.path, entry: ns.name) ?? false else {
                notes.append(
                    "namespace \(ns.name): cgroup \(cg.path) was not created by netshape and is left as it is, "
                        + "with its \(cg.pids.count) process(es)")
                continue
            }
            guard cg.children.isEmpty else {
                notes.append(
                    "namespace \(ns.name): cgroup \(cg.path) is no longer in the policy but holds cgroups netshape "
                        + "did not create (\(cg.children.sorted().joined(separator: ", "))): left until they are gone")
                continue
            }
            // rmdir refuses a populated cgroup: hand its processes back to the root (classid 0 → default class).
            // (Processes a rule just moved elsewhere have left it already.)
            for pid in cg.pids where !moved.contains(pid) {
                let comm = seen.processes.first { $0.pid == pid }?.comm ?? "?"
                removals.insert(
                    Operation(namespace: ns.name, action: .moveProcess(pid: pid, comm: comm, from: cg.path, to: "")),
                    at: 0)
            }
            removals.append(Operation(namespace: ns.name, action: .removeCgroup(path: cg.path, classid: cg.classid)))
        }

    }

    /// The device a tree is built on.
    struct TreeTarget {
        var namespace: String
        var device: String
        var link: Operation.Link
    }

    /// The tree as the planner wants it.
    struct TreeWant {
        var qdisc: HTBQdiscSpec
        /// Root first (creation order).
        var classes: [HTBClassSpec]
        var leaves: [LeafQdiscSpec]
    }

    /// What is on one device, for comparing an HTB tree.
    struct TreeView {
        var root: ObservedQdisc?
        var classes: [ObservedClass]
        var qdiscs: [ObservedQdisc]
    }

    /// Appends the operations that make one device carry the HTB tree `want`. Returns true when the
    /// tree is (re)built from scratch (nothing of it can be reused).
    static func diffTree(
        _ target: TreeTarget, _ want: TreeWant, _ view: TreeView,
        owns: (ObservedQdisc) -> Bool, adoptable: (ObservedQdisc) -> Bool, created: (TCHandle) -> Bool,
        force: Bool, ops: inout [Operation], removals: inout [Operation], notes: inout [String]
    ) throws -> Bool {
        let namespace = target.namespace
        let device = target.device
        func op(_ a: Operation.Action) -> Operation {
            Operation(namespace: namespace, device: device, link: target.link, action: a)
        }
        let qdisc = want.qdisc
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
                    target.link == .ingress
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
        let wanted = Set(want.classes.map(\.classid))
        let parents = Set(want.classes.map(\.parent))
        // Classes someone else hung under one of ours make it an inner class: it can carry no leaf.
        let foreignChildren = seenClasses.values.filter { !wanted.contains($0.classid) && !created($0.classid) }
        var blockedLeaves = Set<TCHandle>()
        for c in foreignChildren.sorted(by: { $0.classid < $1.classid }) {
            notes.append(
                "namespace \(namespace): class \(c.classid) (parent \(c.parent)) on \(device) was not created by "
                    + "netshape and is left as it is")
            if wanted.contains(c.parent) { blockedLeaves.insert(c.parent) }
        }
        for spec in want.classes {
            if let have = seenClasses[spec.classid] {
                let inner = parents.contains(spec.classid) || blockedLeaves.contains(spec.classid)
                if !spec.matches(have, inner: inner) { ops.append(op(.changeClass(spec, old: have))) }
            } else {
                ops.append(op(.addClass(spec)))
            }
        }
        for leaf in want.leaves {
            if blockedLeaves.contains(leaf.parent) {
                notes.append(
                    "namespace \(namespace): class \(leaf.parent) has child classes netshape did not create, so it "
                        + "carries no leaf queue")
                continue
            }
            if let have = seenLeaves[leaf.parent] {
                if have.queue != leaf.queue {
                    let old = LeafQdiscSpec(parent: leaf.parent, queue: have.queue ?? .pfifo(limit: 0))
                    ops.append(op(have.queue == nil ? .addLeaf(leaf) : .replaceLeaf(leaf, old: old)))
                }
            } else {
                ops.append(op(.addLeaf(leaf)))
            }
        }
        for (id, have) in seenClasses.filter({ !wanted.contains($0.key) && created($0.key) }).sorted(by: {
            $0.key > $1.key
        }) {
            if seenClasses.values.contains(where: { $0.parent == id }) {
                notes.append(
                    "namespace \(namespace): class \(id) is no longer in the policy but has child classes netshape "
                        + "did not create: left until they are gone")
                continue
            }
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
        _ ops: inout [Operation], _ removals: inout [Operation], _ notes: inout [String]
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
        let tree = owned?.ingress?.tree.flatMap { $0.netnsID == ing.netnsID && $0.ifindex == ing.ifindex ? $0 : nil }
        _ = try diffTree(
            TreeTarget(namespace: ns.name, device: ing.device, link: .ingress),
            TreeWant(qdisc: plan.qdisc, classes: [plan.rootClass], leaves: [plan.leaf]),
            fresh
                ? TreeView(root: nil, classes: [], qdiscs: [])
                : TreeView(root: ing.configuredRoot, classes: ing.classes, qdiscs: ing.qdiscs),
            owns: { owned?.ingress?.tree?.owns($0, netnsID: ing.netnsID, ifindex: ing.ifindex) == true },
            adoptable: { _ in false }, created: { tree?.created($0) ?? true }, force: options.force, ops: &ops,
            removals: &removals, notes: &notes)
    }

    /// Removes a tree object by object, leaves and classes child-first, then the root: deleting the
    /// root alone would take everything with it, but its undo (`qdisc add`) could not bring the
    /// classes back if a later step fails and the run rolls back.
    static func teardown(_ root: ObservedQdisc, _ view: TreeView, _ target: TreeTarget) -> [Operation] {
        func op(_ a: Operation.Action) -> Operation {
            Operation(namespace: target.namespace, device: target.device, link: target.link, action: a)
        }
        let major = root.handle.major
        let classes = view.classes.map(\.spec).filter { $0.classid.major == major }
        func depth(_ c: HTBClassSpec) -> Int {
            var d = 0
            var parent = c.parent
            while let p = classes.first(where: { $0.classid == parent }), d < 8 {
                d += 1
                parent = p.parent
            }
            return d
        }
        var ops: [Operation] = []
        for q in view.qdiscs where q.parent.major == major && q.parent.minor != 0 {
            if let queue = q.queue { ops.append(op(.deleteLeaf(LeafQdiscSpec(parent: q.parent, queue: queue)))) }
        }
        for c in classes.sorted(by: { depth($0) > depth($1) }) { ops.append(op(.deleteClass(c))) }
        ops.append(op(.deleteRootQdisc(HTBQdiscSpec(handle: root.handle, defaultMinor: root.htbDefault ?? 0))))
        return ops
    }

    /// Refuses, before anything changes, a policy whose entries collide with another policy's or with
    /// each other: an entry name recorded for another policy, a device whose tree another entry owns,
    /// two entries on the same device of the same namespace.
    public static func checkClaims(_ desired: DesiredState, _ observed: ObservedState, policyPath: String) throws {
        let record = observed.ownership
        var byDevice: [String: String] = [:]
        for ns in desired.namespaces {
            if let other = record.namespaces[ns.name], other.policy != policyPath {
                throw DiffError(
                    code: .claimed, namespace: ns.name,
                    message:
                        "namespace \(ns.name): this name is already applied by \(other.policy); rename the entry, or "
                        + "remove that policy's shaping first (netshape reset \(other.policy))")
            }
            guard let seen = observed.namespaces[ns.name], seen.problem == nil, !seen.netnsID.isEmpty else { continue }
            let key = "\(seen.netnsID)/\(seen.ifindex)"
            if let first = byDevice[key] {
                throw DiffError(
                    code: .duplicateTarget, namespace: ns.name,
                    message:
                        "namespaces \(first) and \(ns.name) both shape device \(seen.device) of the same network "
                        + "namespace (\(ns.target)): one device carries one tree; merge the entries")
            }
            byDevice[key] = ns.name
            var roots: [(ObservedQdisc, String, Int32, String)] = []
            if let root = seen.configuredRoot { roots.append((root, seen.netnsID, seen.ifindex, seen.device)) }
            if let ing = seen.ingress, let root = ing.configuredRoot {
                roots.append((root, ing.netnsID, ing.ifindex, ing.device))
            }
            for (root, netnsID, ifindex, device) in roots {
                guard let other = record.claimant(of: root, netnsID: netnsID, ifindex: ifindex, except: ns.name),
                    let entry = record.namespaces[other]
                else { continue }
                throw DiffError(
                    code: .claimed, namespace: ns.name,
                    message:
                        "namespace \(ns.name): device \(device) is already shaped by namespace \(other) of "
                        + "\(entry.policy) (the same network namespace as \(ns.target)); netshape will not "
                        + "take it over, not even with --force: reset that policy first (netshape reset \(entry.policy))"
                )
            }
        }
    }

    /// A root HTB with our handle and our classifier filter is netshape's even when the ownership
    /// record was lost (it lives on tmpfs with the rest of the state).
    public static func adoptable(_ root: ObservedQdisc, _ ns: DesiredNamespace, _ seen: ObservedNamespace) -> Bool {
        root.kind == "htb" && root.handle == ns.qdisc.handle
            && seen.filters.contains { $0.parent == ns.filter.parent && $0.priority == ns.filter.priority }
    }

    static func deepestFirst(_ a: ObservedCgroup, _ b: ObservedCgroup) -> Bool {
        a.path.count > b.path.count || (a.path.count == b.path.count && a.path < b.path)
    }
}
