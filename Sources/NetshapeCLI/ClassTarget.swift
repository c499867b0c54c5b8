import ArgumentParser
import NetshapeCore
import NetshapeKernel

/// `POLICY CLASS`, the arguments `run` and `classify` share, and what they name on the machine.
struct ClassTarget: ParsableArguments {
    @Argument(help: "The policy file (TOML).")
    var policy: String
    @Argument(help: "The class (CLASS or NAMESPACE/CLASS).")
    var `class`: String

    struct Resolved {
        let session: Session
        let namespace: NamespacePolicy
        let cls: ClassPolicy
        let placement: Placement
        let netns: NetworkNamespace

        /// Refuses to place `processes` (what each is, in the error's words, and what the
        /// socket-creation program reads of it) in this net_cls class when that program would
        /// open their sockets in another class: HTB takes the priority it sets before the cgroup's
        /// classid, so the placement would not be the class the operator asked for.
        func refuseWhereSockCreateTakes(_ processes: [(what: String, command: PathClassEntry.Command)]) throws {
            let s = session
            guard case .netCls(let hierarchy, let path) = placement, let applied = hierarchy.classid(path),
                let desired = try Planner.plan(s.policy, capabilities: s.kernel.capabilities()).namespace(
                    namespace.name),
                desired.sockCreate
            else { return }
            let observed: ObservedState
            do {
                observed = try observeNamespace(s, namespace.name)
            } catch let e as KernelError where e.code == .notFound && Cgroup2Mount.find() == nil {
                // `ip netns exec` mounts a fresh /sys, which hides the cgroup2 mount the program is
                // attached under: the placement stays possible, the check does not. Said only where
                // another class's rules could take one of them (by its name, or by ids alone).
                let rivals = desired.classes.filter { $0.name != cls.name && SockCreate.kernelEvaluable($0.match) }
                guard
                    processes.contains(where: { p in
                        rivals.contains { $0.match.comm.isEmpty || $0.match.comm.contains(p.command.comm) }
                    })
                else { return }
                printError(
                    "note: cannot read the socket-creation rules here (\(e.reason)), so whether they take "
                        + "\(processes.map(\.what).joined(separator: ", ")) into another class is not checked",
                    prefixed: false)
                return
            }
            // Compared with the classid the class's cgroup holds, and named with the classids as
            // applied: a fresh plan may number the classes otherwise.
            let (ns, planned) = try appliedPlan(s, observed, namespace.name, cls.name)
            var mine = planned
            mine.spec.classid = applied
            for (what, command) in processes {
                if let taken = command.takenFrom(mine, in: ns, observed: observed, by: what) { throw taken }
            }
        }
    }

    /// Where a process joins the class.
    enum Placement {
        /// The class's net_cls cgroup (`path` below the hierarchy's root).
        case netCls(NetClsHierarchy, path: String)
        /// The one cgroup v2 directory of a class classified by path (`run` only), with the cgroup
        /// id the classifier's map holds for it.
        case cgroup2(mount: String, path: String, id: UInt64)
    }

    /// The class, its applied cgroup and its namespace; throws before anything is changed.
    /// `entering`: a path class may be joined through its cgroup v2 directory (`run`), by a
    /// process that will exec `command` (checked against the socket-creation rules).
    func resolve(lock: Bool, entering: Bool = false, command: PathClassEntry.Command? = nil) throws -> Resolved {
        let s = try Session(policyPath: policy, lock: lock)
        let (ns, cls) = try resolveClass(self.class, in: s.policy)
        let placement = try appliedCgroup(s, ns, cls, entering: entering, command: command)
        let netns = try s.kernel.namespace(for: NamespaceRequest(name: ns.name, target: ns.netns, device: ns.device))
        return Resolved(session: s, namespace: ns, cls: cls, placement: placement, netns: netns)
    }
}

/// Resolves `CLASS` or `NAMESPACE/CLASS` against a policy.
func resolveClass(_ spec: String, in policy: Policy) throws -> (NamespacePolicy, ClassPolicy) {
    let parts = spec.split(separator: "/", maxSplits: 1).map(String.init)
    let candidates: [(NamespacePolicy, ClassPolicy)]
    if parts.count == 2 {
        guard let ns = policy.namespace(parts[0]) else {
            throw CLIError(UsageHelp.unknownNamespace(parts[0], in: policy), exitCode: 2)
        }
        candidates = ns.class(parts[1]).map { [(ns, $0)] } ?? []
    } else {
        candidates = policy.namespaces.compactMap { ns in ns.class(spec).map { (ns, $0) } }
    }
    guard let first = candidates.first else {
        let ns = parts.count == 2 ? policy.namespace(parts[0]) : nil
        throw CLIError(UsageHelp.unknownClass(spec, in: policy, namespace: ns), exitCode: 2)
    }
    guard candidates.count == 1 else {
        let names = candidates.map { "\($0.0.name)/\($0.1.name)" }.joined(separator: ", ")
        throw CLIError("class \"\(spec)\" is in several namespaces (\(names)): write NAMESPACE/CLASS", exitCode: 2)
    }
    return first
}

/// The class's cgroup, which `apply` must have created (for a path class: its applied cgroup v2
/// directory, when `entering`).
func appliedCgroup(
    _ s: Session, _ ns: NamespacePolicy, _ cls: ClassPolicy, entering: Bool = false,
    command: PathClassEntry.Command? = nil
) throws -> ClassTarget.Placement {
    // A class classified by cgroup v2 path has no net_cls cgroup to join (and none is mounted for it).
    if let desired = try? Planner.plan(s.policy, capabilities: s.kernel.capabilities()).namespace(ns.name),
        let planned = desired.classes.first(where: { $0.name == cls.name }), planned.classification != .netCls
    {
        if entering, planned.classification == .cgroup2 {
            let observed = try observeNamespace(s, ns.name)
            // The map holds the classids as applied, which a fresh plan may number otherwise.
            let (applied, class_) = try appliedPlan(s, observed, ns.name, cls.name)
            let (mount, path, id) = try PathClassEntry.directory(
                class_, in: applied, observed: observed, policyPath: s.policy.source, command: command
            ).get()
            return .cgroup2(mount: mount, path: path, id: id)
        }
        if let why = Render.noNetClsCgroup(planned, ns.name, target: ns.netns, mount: Cgroup2Mount.find()) {
            throw CLIError(why)
        }
    }
    let h = try s.kernel.netCls()
    let path = CgroupPaths.class(cls.name, in: ns.name)
    guard h.classid(path) != nil else {
        throw CLIError(
            "class \(ns.name)/\(cls.name) has no cgroup yet (\(h.root)/\(path)): run netshape apply \(s.policy.source) first"
        )
    }
    return .netCls(h, path: path)
}

/// One namespace of the session's policy as the machine has it now: its classes' cgroups (for the
/// classids they hold) but not their members, and no /proc scan.
func observeNamespace(_ s: Session, _ name: String) throws -> ObservedState {
    var request = ObservationRequest(policy: s.policy, processes: false)
    request.namespaces = request.namespaces.filter { $0.name == name }
    let classes = s.policy.namespace(name)?.classes.map { CgroupPaths.class($0.name, in: name) } ?? []
    request.cgroupsWithoutMembers = Set(classes)
    return try s.kernel.observe(request)
}

/// The namespace and class planned with the classids `observed` shows were applied.
func appliedPlan(_ s: Session, _ observed: ObservedState, _ ns: String, _ cls: String) throws -> (
    DesiredNamespace, PlannedClass
) {
    let plan = try Planner.plan(
        s.policy, capabilities: s.kernel.capabilities(), previous: observed.previousAssignments(for: s.policy))
    guard let d = plan.namespace(ns), let c = d.classes.first(where: { $0.name == cls }) else {
        throw CLIError("class \(ns)/\(cls) is not in the plan of \(s.policy.source)")
    }
    return (d, c)
}
