/// What the engine asks the kernel layer to observe for one namespace.
public struct NamespaceRequest: Sendable, Equatable {
    public var name: String
    public var target: NetnsTarget
    /// nil = the namespace's default-route device.
    public var device: String?
    /// Observe where the ingress is (or would be) shaped.
    public var ingress: Bool
    /// Read only the device's classes (the read-back after an apply that changed nothing but
    /// classes); the caller keeps the rest from its earlier observation.
    public var classesOnly = false
    /// With `classesOnly`: only these classes (nil: all of the device's); one not there is absent.
    /// The read-back after rate edits asks for the classes it changed.
    public var onlyClasses: Set<TCHandle>? = nil
    /// Observe what exists of this provisioning.
    public var provision: Provision?

    public init(name: String, target: NetnsTarget, device: String?, ingress: Bool = false, provision: Provision? = nil)
    {
        self.name = name
        self.target = target
        self.device = device
        self.ingress = ingress
        self.provision = provision
    }

    /// The IFB netshape creates for this namespace's ingress when the device has no reachable
    /// veth peer: a name derived from the namespace name, within IFNAMSIZ.
    public var ifbName: String { "nsifb" + String(Planner.fnv1a(name), radix: 16) }
}

/// One observation: the namespaces of a policy, the user and group names its rules use.
public struct ObservationRequest: Sendable, Equatable {
    public var namespaces: [NamespaceRequest]
    public var users: [String]
    public var groups: [String]
    /// Read /proc to list each namespace's processes.
    public var processes: Bool
    /// List netshape's net_cls cgroups (the verification after an apply skips it when no operation
    /// touched a cgroup: on a big tree it is most of the cost of a one-class change).
    public var cgroups = true
    /// Only these cgroups (paths relative to the mount), each read afresh: there or not. nil: every
    /// netshape cgroup of `namespaces`. The verification after an apply reads back what it changed.
    public var cgroupPaths: Set<String>? = nil
    /// Cgroups whose `cgroup.procs` the caller does not need. A plan takes memberships from /proc;
    /// it needs the members only of cgroups it may remove (they must be emptied first).
    public var cgroupsWithoutMembers: Set<String> = []
    /// cgroup v2 paths (normalised, relative to the cgroup2 mount) to resolve to ids: those of
    /// classes whose rules are cgroup paths only.
    public var cgroup2Paths: [String] = []
    /// Also read the subtrees under `cgroup2Paths` with their processes (`status` lists the
    /// members of path classes from them; nothing else needs the walk).
    public var cgroup2Members = false

    public init(
        namespaces: [NamespaceRequest], users: [String] = [], groups: [String] = [], processes: Bool = true,
        cgroup2Paths: [String] = []
    ) {
        self.namespaces = namespaces
        self.users = users
        self.groups = groups
        self.processes = processes
        self.cgroup2Paths = cgroup2Paths
    }

    /// Everything `policy` needs observed.
    public init(policy: Policy, processes: Bool = true) {
        var users = Set<String>()
        var groups = Set<String>()
        for ns in policy.namespaces {
            for c in ns.classes {
                for case .name(let n) in c.match.user { users.insert(n) }
                for case .name(let n) in c.match.group { groups.insert(n) }
            }
        }
        // Without a single match rule there is nothing to classify: skip reading every process.
        let anyRules = policy.namespaces.contains { $0.classes.contains { !$0.match.isEmpty } }
        self.init(
            namespaces: policy.namespaces.map {
                // Ingress is always observed: a policy that dropped `ingress` must find what to remove.
                NamespaceRequest(
                    name: $0.name, target: $0.netns, device: $0.device ?? ($0.provision != nil ? "eth0" : nil),
                    ingress: true, provision: $0.provision)
            },
            users: users.sorted(), groups: groups.sorted(), processes: processes && anyRules,
            cgroup2Paths: Self.cgroup2Paths(policy))
    }

    /// The paths of every class whose rules are cgroup paths only (a class the planner may classify
    /// by cgroup v2 path), normalised and de-duplicated.
    public static func cgroup2Paths(_ policy: Policy) -> [String] {
        var out = Set<String>()
        for ns in policy.namespaces {
            for c in ns.classes where c.match.isCgroupPathsOnly {
                for p in c.match.cgroup { out.insert(Cgroup2Rule.normalize(p)) }
            }
        }
        return out.sorted()
    }
}

/// The one boundary between the engine and the machine. The real implementation lives in
/// NetshapeKernel (netlink, bpf(), cgroupfs, /proc); tests use an in-memory fake.
///
/// Implementations must keep the kernel's error code in what they throw: "already exists" and
/// "no such object" drive idempotence and rollback.
public protocol KernelPort: AnyObject {
    /// What this kernel supports (probed once and cached).
    func capabilities() throws -> KernelCapabilities
    /// Dumps the state `request` names.
    func observe(_ request: ObservationRequest) throws -> ObservedState
    /// Performs one operation.
    func execute(_ operation: Operation) throws
    /// Performs `operations` in order, as many at once as the port can (netlink requests share a
    /// datagram): one result per operation attempted, stopping after the first failure. The
    /// results can cover fewer than all of them: the rest were not attempted. A port that batches
    /// may report successes after the first failure (the kernel carried on with them); each is done.
    func execute(_ operations: [Operation]) -> [Result<Void, any Error>]
    /// The ownership record as persisted (empty when none was written yet).
    func loadOwnership() throws -> OwnershipRecord
    /// Persists the ownership record (before the objects it names are created).
    func saveOwnership(_ record: OwnershipRecord) throws
    /// The running containers `selector` matches (for `containers` entries).
    func containers(matching selector: ContainerSelector) throws -> [ContainerInfo]
}

extension KernelPort {
    /// One at a time, stopping at the first failure.
    public func execute(_ operations: [Operation]) -> [Result<Void, any Error>] {
        oneAtATime(operations, execute)
    }

    /// No container runtime: nothing matches (the in-memory fake and other ports without one).
    public func containers(matching selector: ContainerSelector) throws -> [ContainerInfo] { [] }
}

/// Runs `items` in order through `run`, stopping after the first that throws: one result per item
/// attempted. The one-at-a-time path of every `KernelPort.execute(_: [Operation])`.
public func oneAtATime<C: Collection>(_ items: C, _ run: (C.Element) throws -> Void) -> [Result<Void, any Error>] {
    var results: [Result<Void, any Error>] = []
    for item in items {
        results.append(Result { try run(item) })
        if results[results.count - 1].isFailure { break }
    }
    return results
}

extension Result {
    /// Whether this is a failure (batch results are checked for one).
    public var isFailure: Bool {
        if case .failure = self { true } else { false }
    }
}

/// errno values the engine branches on. Core and the engine import no libc, and these numbers
/// are the same on every Linux architecture.
public enum KernelErrno {
    public static let EPERM: Int32 = 1
    public static let ENOENT: Int32 = 2
    public static let ESRCH: Int32 = 3
    public static let EACCES: Int32 = 13
    public static let EEXIST: Int32 = 17
    public static let EINVAL: Int32 = 22
}

/// An error from the kernel layer that keeps the kernel's errno.
public protocol KernelFailure: Error, CustomStringConvertible {
    /// The errno behind the failure, when there is one.
    var errno: Int32? { get }
}
