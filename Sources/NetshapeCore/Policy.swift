/// A validated policy: what `netshape check` accepts. Every value here already passed the rules of
/// "What a valid policy must satisfy" (docs/policy.md); the planner may rely on them.
public struct Policy: Sendable, Equatable {
    /// `[settings]`.
    public var settings: Settings
    /// `[[namespace]]`, in file order.
    public var namespaces: [NamespacePolicy]
    /// Where the policy came from (for messages).
    public var source: String

    public init(settings: Settings = Settings(), namespaces: [NamespacePolicy], source: String = "<memory>") {
        self.settings = settings
        self.namespaces = namespaces
        self.source = source
    }

    /// The namespace named `name`.
    public func namespace(_ name: String) -> NamespacePolicy? { namespaces.first { $0.name == name } }
}

/// `[settings]`.
public struct Settings: Sendable, Equatable {
    /// Which cgroup classifier to attach.
    public var classifier: ClassifierChoice
    /// Mount point of the net_cls hierarchy; nil = find it in /proc/self/mountinfo (or mount it).
    public var cgroupRoot: String?
    /// Default leaf queue of every class.
    public var leaf: LeafChoice
    /// `sock_create = "auto"` (true): classify new sockets of comm/user/group classes at creation
    /// where the kernel can; `"off"`: the daemon and net_cls only.
    public var sockCreate = true

    public init(classifier: ClassifierChoice = .auto, cgroupRoot: String? = nil, leaf: LeafChoice = .auto) {
        self.classifier = classifier
        self.cgroupRoot = cgroupRoot
        self.leaf = leaf
    }
}

/// `settings.classifier`.
public enum ClassifierChoice: String, Sendable, Equatable, CaseIterable, Codable {
    /// cls_cgroup where the kernel has it, else cls_bpf.
    case auto
    /// cls_cgroup only.
    case cgroup
    /// cls_bpf running `bpf_get_cgroup_classid` only.
    case bpf
}

/// `leaf` (settings, namespace or class).
public enum LeafChoice: String, Sendable, Equatable, CaseIterable, Codable {
    /// fq_codel where the kernel has it, else a bfifo sized from the class's ceil.
    case auto
    case fqCodel = "fq_codel"
    case sfq
    case pfifo
    case bfifo
}

/// Which network namespace a policy namespace targets (`netns` key).
public enum NetnsTarget: Sendable, Hashable, Codable, CustomStringConvertible {
    /// The namespace netshape itself runs in (the host's).
    case host
    /// An `ip netns` name: `/run/netns/NAME`.
    case named(String)
    /// A path to a namespace file (a bind mount such as /var/run/docker/netns/…, or /proc/N/ns/net).
    case path(String)
    /// The namespace of a running process: `/proc/PID/ns/net`.
    case pid(Int32)
    /// A Docker container by name or id (`docker:NAME`), asked of the Docker Engine API each time
    /// netshape observes: its namespace changes with every restart.
    case docker(String)
    /// A Podman container by name or id (`podman:NAME`), asked of `podman inspect` each time.
    case podman(String)

    /// The file that names this namespace (nil for the host, and for a container, whose file is
    /// known only by asking its runtime: see `container`).
    public var path: String? {
        switch self {
        case .host, .docker, .podman: return nil
        case .named(let n): return "/run/netns/\(n)"
        case .path(let p): return p
        case .pid(let p): return "/proc/\(p)/ns/net"
        }
    }

    /// The runtime and container name or id of a container target.
    public var container: (runtime: ContainerRuntimeKind, reference: String)? {
        switch self {
        case .docker(let r): return (.docker, r)
        case .podman(let r): return (.podman, r)
        default: return nil
        }
    }

    public var description: String {
        switch self {
        case .host: return "host"
        case .named(let n): return n
        case .path(let p): return p
        case .pid(let p): return "pid:\(p)"
        case .docker(let r): return "docker:\(r)"
        case .podman(let r): return "podman:\(r)"
        }
    }
}

/// `[namespace.provision]`: what netshape creates when it is missing.
public struct Provision: Sendable, Equatable {
    /// CIDR given to the device inside the namespace.
    public var address: String?
    /// Name of the veth peer left in the host namespace.
    public var hostDevice: String
    /// CIDR for the host side (exclusive with `bridge`).
    public var hostAddress: String?
    /// Bridge to attach the host side to (created if missing).
    public var bridge: String?
    /// Default route inside the namespace.
    public var gateway: String?

    public init(
        address: String? = nil, hostDevice: String, hostAddress: String? = nil, bridge: String? = nil,
        gateway: String? = nil
    ) {
        self.address = address
        self.hostDevice = hostDevice
        self.hostAddress = hostAddress
        self.bridge = bridge
        self.gateway = gateway
    }
}

/// `[[namespace]]`.
public struct NamespacePolicy: Sendable, Equatable {
    public var name: String
    public var netns: NetnsTarget
    /// nil = the namespace's default-route device.
    public var device: String?
    public var egress: Rate
    public var ingress: Rate?
    /// The class unmatched traffic goes to; nil = an implicit default class.
    public var defaultClass: String?
    public var leaf: LeafChoice?
    public var provision: Provision?
    public var classes: [ClassPolicy]
    /// `containers`: a template for every container the selector matches (nil: one namespace).
    public var containers: ContainerSelector?
    /// For an instance of a `containers` entry: the entry's name and the container it shapes.
    public var instanceOf: ContainerInstance?

    public init(
        name: String, netns: NetnsTarget, device: String? = nil, egress: Rate, ingress: Rate? = nil,
        defaultClass: String? = nil, leaf: LeafChoice? = nil, provision: Provision? = nil,
        classes: [ClassPolicy] = [], containers: ContainerSelector? = nil, instanceOf: ContainerInstance? = nil
    ) {
        self.containers = containers
        self.instanceOf = instanceOf
        self.name = name
        self.netns = netns
        self.device = device
        self.egress = egress
        self.ingress = ingress
        self.defaultClass = defaultClass
        self.leaf = leaf
        self.provision = provision
        self.classes = classes
    }

    /// The class named `name`.
    public func `class`(_ name: String) -> ClassPolicy? { classes.first { $0.name == name } }
}

/// `[[namespace.class]]`.
public struct ClassPolicy: Sendable, Equatable {
    public var name: String
    public var rate: Rate
    /// nil = the namespace egress (policy.md), not tc's "ceil = rate".
    public var ceil: Rate?
    public var burst: Size?
    public var cburst: Size?
    /// 0 (served first) … 7.
    public var priority: Int
    public var leaf: LeafChoice?
    public var match: MatchRules

    public init(
        name: String, rate: Rate, ceil: Rate? = nil, burst: Size? = nil, cburst: Size? = nil,
        priority: Int = 4, leaf: LeafChoice? = nil, match: MatchRules = MatchRules()
    ) {
        self.name = name
        self.rate = rate
        self.ceil = ceil
        self.burst = burst
        self.cburst = cburst
        self.priority = priority
        self.leaf = leaf
        self.match = match
    }
}

/// A user or group named by name or numeric id.
public enum Principal: Sendable, Hashable, Codable, CustomStringConvertible {
    case name(String)
    case id(UInt32)

    public var description: String {
        switch self {
        case .name(let n): return n
        case .id(let i): return String(i)
        }
    }
}

/// `match`: every given key must match (AND); within a key any value may (OR).
public struct MatchRules: Sendable, Equatable {
    public var comm: [String] = []
    public var exe: [String] = []
    public var user: [Principal] = []
    public var group: [Principal] = []
    /// Regular expressions (validated by the policy parser).
    public var cmdline: [String] = []
    public var cgroup: [String] = []
    public var pid: [Int32] = []

    public init(
        comm: [String] = [], exe: [String] = [], user: [Principal] = [], group: [Principal] = [],
        cmdline: [String] = [], cgroup: [String] = [], pid: [Int32] = []
    ) {
        self.comm = comm
        self.exe = exe
        self.user = user
        self.group = group
        self.cmdline = cmdline
        self.cgroup = cgroup
        self.pid = pid
    }

    /// True when no key is given: such a class only receives processes placed by hand.
    public var isEmpty: Bool {
        comm.isEmpty && exe.isEmpty && user.isEmpty && group.isEmpty && cmdline.isEmpty && cgroup.isEmpty
            && pid.isEmpty
    }
}
