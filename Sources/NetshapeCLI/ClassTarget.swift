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
        let hierarchy: NetClsHierarchy
        /// The class's cgroup below the hierarchy's root.
        let path: String
        let netns: NetworkNamespace
    }

    /// The class, its applied cgroup and its namespace; throws before anything is changed.
    func resolve(lock: Bool) throws -> Resolved {
        let s = try Session(policyPath: policy, lock: lock)
        let (ns, cls) = try resolveClass(self.class, in: s.policy)
        let (h, path) = try appliedCgroup(s, ns, cls)
        let netns = try s.kernel.namespace(for: NamespaceRequest(name: ns.name, target: ns.netns, device: ns.device))
        return Resolved(session: s, namespace: ns, cls: cls, hierarchy: h, path: path, netns: netns)
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

/// The class's cgroup, which `apply` must have created.
func appliedCgroup(_ s: Session, _ ns: NamespacePolicy, _ cls: ClassPolicy) throws -> (NetClsHierarchy, String) {
    // A class classified by cgroup v2 path has no net_cls cgroup to join (and none is mounted for it).
    if let planned = try? Planner.plan(s.policy, capabilities: s.kernel.capabilities()).namespace(ns.name)?
        .classes.first(where: { $0.name == cls.name }), let why = Render.noNetClsCgroup(planned, ns.name)
    {
        throw CLIError(why)
    }
    let h = try s.kernel.netCls()
    let path = CgroupPaths.class(cls.name, in: ns.name)
    guard h.classid(path) != nil else {
        throw CLIError(
            "class \(ns.name)/\(cls.name) has no cgroup yet (\(h.root)/\(path)): run netshape apply \(s.policy.source) first"
        )
    }
    return (h, path)
}
