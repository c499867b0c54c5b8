/// Why the machine cannot be converged as asked (exit 1).
public struct DiffError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// The namespace or device is not there.
        case unreachable
        /// The device's root qdisc was configured by someone else.
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
    public static func diff(_ desired: DesiredState, _ observed: ObservedState,
                            matcher: ProcessMatcher, options: DiffOptions = DiffOptions()) throws -> [Operation] {
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

            // 1. The root qdisc: ours, the kernel default, or someone else's.
            var fresh = false
            if let root = seen.configuredRoot {
                let ours = observed.ownership.owns(root, in: seen) || adoptable(root, ns, seen)
                if ours {
                    if root.htbDefault != ns.qdisc.defaultMinor {
                        // sch_htb has no qdisc `change`: a tree with another default class (built by an
                        // older netshape, or adopted) is rebuilt. netshape's own trees never need this.
                        ops.append(op(.deleteRootQdisc(HTBQdiscSpec(handle: root.handle, defaultMinor: root.htbDefault ?? 0))))
                        ops.append(op(.addRootQdisc(ns.qdisc)))
                        fresh = true
                    }
                } else if options.force {
                    ops.append(op(.replaceRootQdisc(ns.qdisc, replacing: root)))
                    fresh = true
                } else {
                    throw DiffError(
                        code: .foreignRootQdisc, namespace: ns.name,
                        message: "namespace \(ns.name): device \(dev) already has a root qdisc netshape did not create "
                            + "(\(root.kind) \(root.handle)); remove it or run apply --force to replace it")
                }
            } else {
                ops.append(op(.addRootQdisc(ns.qdisc)))
                fresh = true
            }

            // 2. Classes and their leaves, compared only under our handle.
            let major = ns.qdisc.handle.major
            let seenClasses = fresh ? [:] : Dictionary(
                seen.classes.filter { $0.spec.classid.major == major }.map { ($0.spec.classid, $0.spec) },
                uniquingKeysWith: { a, _ in a })
            let seenLeaves = fresh ? [:] : Dictionary(
                seen.qdiscs.filter { $0.parent.major == major && $0.parent.minor != 0 }.map { ($0.parent, $0) },
                uniquingKeysWith: { a, _ in a })
            for spec in ns.allClasses {
                if let have = seenClasses[spec.classid] {
                    if !spec.matches(have) { ops.append(op(.changeClass(spec, old: have))) }
                } else {
                    ops.append(op(.addClass(spec)))
                }
            }
            for c in ns.classes {
                if let have = seenLeaves[c.spec.classid] {
                    if have.queue != c.leaf.queue {
                        let old = LeafQdiscSpec(parent: c.spec.classid, queue: have.queue ?? .pfifo(limit: 0))
                        ops.append(op(have.queue == nil ? .addLeaf(c.leaf) : .replaceLeaf(c.leaf, old: old)))
                    }
                } else {
                    ops.append(op(.addLeaf(c.leaf)))
                }
            }
            let wanted = Set(ns.allClasses.map(\.classid))
            for (id, have) in seenClasses.sorted(by: { $0.key > $1.key }) where !wanted.contains(id) {
                if let leaf = seenLeaves[id], let q = leaf.queue {
                    removals.append(op(.deleteLeaf(LeafQdiscSpec(parent: id, queue: q))))
                }
                removals.append(op(.deleteClass(have)))
            }

            // 3. The classifier: exactly one netshape filter of the chosen kind at our priority.
            let ourFilters = fresh ? [] : seen.filters.filter {
                $0.parent == ns.filter.parent && $0.priority == ns.filter.priority
            }
            let good = ourFilters.contains { f in
                f.kind == ns.filter.kind.kind && f.handle == ns.filter.handle
                    && (ns.filter.kind != .bpf || f.bpfName == FilterSpec.bpfProgramName)
            }
            if !good {
                for f in ourFilters {
                    let kind: ClassifierKind = f.kind == "cgroup" ? .cgroup : .bpf
                    ops.append(op(.deleteFilter(FilterSpec(parent: f.parent, kind: kind, priority: f.priority,
                                                           handle: f.handle))))
                }
                ops.append(op(.addFilter(ns.filter)))
            }

            // 4. cgroups: netshape/, netshape/<ns>/, one per class with its classid.
            let nsDir = "netshape/\(ns.name)"
            if needRootDir {
                ops.append(Operation(namespace: ns.name, action: .createCgroup(path: "netshape", classid: .unspecified)))
                needRootDir = false
            }
            if observed.cgroups[nsDir] == nil {
                ops.append(Operation(namespace: ns.name, action: .createCgroup(path: nsDir, classid: .unspecified)))
            }
            for cg in ns.cgroups {
                if let have = observed.cgroups[cg.relativePath] {
                    if have.classid != cg.classid {
                        ops.append(Operation(namespace: ns.name, action: .setClassID(
                            path: cg.relativePath, classid: cg.classid, old: have.classid)))
                    }
                } else {
                    ops.append(Operation(namespace: ns.name, action: .createCgroup(path: cg.relativePath,
                                                                                  classid: cg.classid)))
                }
            }
            let wantedPaths = Set(ns.cgroups.map(\.relativePath))
            let stale = observed.cgroups.values.filter {
                $0.path.hasPrefix(nsDir + "/") && !wantedPaths.contains($0.path)
            }.sorted { $0.path.count > $1.path.count || ($0.path.count == $1.path.count && $0.path < $1.path) }
            for cg in stale {
                // rmdir refuses a populated cgroup: hand its processes back to the root (classid 0 → default class).
                for pid in cg.pids {
                    let comm = seen.processes.first { $0.pid == pid }?.comm ?? "?"
                    removals.insert(Operation(namespace: ns.name, action: .moveProcess(
                        pid: pid, comm: comm, from: cg.path, to: "")), at: 0)
                }
                removals.append(Operation(namespace: ns.name, action: .removeCgroup(path: cg.path, classid: cg.classid)))
            }

            // 5. Processes of this namespace that a rule places in a class they are not in yet.
            //    Processes that match no rule are left where they are: an operator may have placed them
            //    by hand (`classify`, or echo PID > cgroup.procs).
            if options.memberships {
                for p in seen.processes.sorted(by: { $0.pid < $1.pid }) {
                    guard let c = matcher.classify(p, in: ns), let name = c.name else { continue }
                    let path = "\(nsDir)/\(name)"
                    if p.netCls != path {
                        ops.append(Operation(namespace: ns.name, action: .moveProcess(
                            pid: p.pid, comm: p.comm, from: p.netCls, to: path)))
                    }
                }
            }
        }
        return ops + removals
    }

    /// A root HTB with our handle and our classifier filter is netshape's even when the ownership
    /// record was lost (it lives on tmpfs with the rest of the state).
    static func adoptable(_ root: ObservedQdisc, _ ns: DesiredNamespace, _ seen: ObservedNamespace) -> Bool {
        root.kind == "htb" && root.handle == ns.qdisc.handle
            && seen.filters.contains { $0.parent == ns.filter.parent && $0.priority == ns.filter.priority }
    }

    /// The operations that remove everything netshape created for `namespaces`: member processes back
    /// to the root cgroup, the class cgroups, and the root qdisc when netshape owns it (deleting it
    /// removes every class, leaf and filter beneath it and restores the kernel's default qdisc).
    public static func resetOperations(namespaces: [String], _ observed: ObservedState) -> [Operation] {
        var ops: [Operation] = []
        for name in namespaces {
            let dir = "netshape/\(name)"
            let seen = observed.namespaces[name]
            let cgroups = observed.cgroups.values.filter { $0.path == dir || $0.path.hasPrefix(dir + "/") }
                .sorted { $0.path.count > $1.path.count || ($0.path.count == $1.path.count && $0.path < $1.path) }
            for cg in cgroups {
                for pid in cg.pids {
                    let comm = seen?.processes.first { $0.pid == pid }?.comm ?? "?"
                    ops.append(Operation(namespace: name, action: .moveProcess(pid: pid, comm: comm, from: cg.path,
                                                                              to: "")))
                }
            }
            for cg in cgroups {
                ops.append(Operation(namespace: name, action: .removeCgroup(path: cg.path, classid: cg.classid)))
            }
            if let seen, seen.problem == nil, let root = seen.configuredRoot, observed.ownership.owns(root, in: seen) {
                ops.append(Operation(namespace: name, device: seen.device, action: .deleteRootQdisc(
                    HTBQdiscSpec(handle: root.handle, defaultMinor: root.htbDefault ?? 0))))
            }
        }
        return ops
    }
}
