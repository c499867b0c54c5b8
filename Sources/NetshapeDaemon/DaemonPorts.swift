import NetshapeCore
import NetshapeKernel
import NetshapePolicy

/// The daemon's I/O, each behind a small protocol, so NetshapeDaemonTests drive the services with
/// fakes (no root, no kernel): where exec events come from, what /proc says of a process, how a
/// process is moved, the clock, the directory watches, the policy file, systemd, dockerd's events,
/// the CNI plugin's attachment records.
/// `DaemonIO.system` is the real machine.
public protocol ProcessEvents: AnyObject {
    /// One read: events, a timeout, or an overflow (events were lost). Throws on a socket error.
    func next(timeoutMilliseconds: Int32) throws -> ProcConnectorRead
}

extension ProcConnector: ProcessEvents {}

/// The /proc reads of the exec fast path.
public protocol ProcessTable: Sendable {
    /// The network namespace id of `pid` (`st_dev:st_ino` of its ns/net), nil when it is gone.
    func namespaceID(_ pid: Int32) -> String?
    /// The given fields of `pid`, nil when it is gone.
    func process(_ pid: Int32, fields: ProcScanner.Fields) -> ProcessInfo?
}

extension ProcScanner: ProcessTable {}

/// Moves a process into a cgroup of the net_cls hierarchy at `root`.
public protocol CgroupMover: Sendable {
    func move(pid: Int32, to relative: String, root: String) throws
}

/// Time as the daemon's threads see it: the clock of the kernel's event timestamps, and a
/// blocking pause (a reader thread's backoff; never on a concurrency pool thread).
public protocol DaemonClock: Sendable {
    func monotonicNanoseconds() -> UInt64
    func sleep(milliseconds: Int)
}

/// Wakes the reconcile service when entries appear in or leave a watched directory.
public protocol ChangeWatch: AnyObject {
    /// True when something changed within `timeoutMilliseconds`.
    func wait(timeoutMilliseconds: Int32) -> Bool
}

extension DirectoryWatcher: ChangeWatch {}

/// Where container start, die and destroy events come from: dockerd's event stream.
public protocol ContainerEventSource: Sendable {
    /// What is followed, for the log (dockerd's socket).
    var endpoint: String { get }
    /// Calls `event` with the action and container id of each event until `shouldStop` (asked
    /// between events and while idle); returns when the stream ends, throws when there is none.
    func follow(shouldStop: () -> Bool, _ event: (_ action: String, _ id: String) -> Void) throws
}

extension ContainerRuntimes: ContainerEventSource {
    public var endpoint: String { dockerSocket }
    public func follow(shouldStop: () -> Bool, _ event: (String, String) -> Void) throws {
        try followDockerEvents(shouldStop: shouldStop, event)
    }
}

/// The CNI plugin's records of the pods it shaped on this node.
public protocol AttachmentRecords: Sendable {
    /// Watched, so an ADD or DEL wakes the reconcile service.
    var directory: String { get }
    /// Every record by name, and the names of those that could not be read, with why.
    func load() -> (attachments: [String: CNIAttachment], unreadable: [String: String])
}

extension CNIAttachmentStore: AttachmentRecords {}

/// systemd's notification socket (sd_notify).
public protocol ServiceNotifier: Sendable {
    func send(_ state: String)
}

/// Everything the daemon reaches outside its own memory.
public struct DaemonIO: Sendable {
    /// Opens the exec event source (the proc connector needs CAP_NET_ADMIN).
    public var events: @Sendable () throws -> any ProcessEvents
    public var processes: any ProcessTable
    public var mover: any CgroupMover
    public var clock: any DaemonClock
    /// Watches `create` (made when missing) and `existing` (when present).
    public var watch: @Sendable (_ create: [String], _ existing: [String]) throws -> any ChangeWatch
    /// Reads and validates the policy file (daemon start, SIGHUP).
    public var loadPolicy: @Sendable (_ path: String) throws -> Policy
    public var notifier: any ServiceNotifier
    /// Where the net_cls hierarchy is mounted for `settings`.
    public var netClsRoot: @Sendable (_ settings: Settings) -> String
    public var containerEvents: any ContainerEventSource
    public var attachments: any AttachmentRecords

    public init(
        events: @escaping @Sendable () throws -> any ProcessEvents, processes: any ProcessTable,
        mover: any CgroupMover, clock: any DaemonClock,
        watch: @escaping @Sendable ([String], [String]) throws -> any ChangeWatch,
        loadPolicy: @escaping @Sendable (String) throws -> Policy, notifier: any ServiceNotifier,
        netClsRoot: @escaping @Sendable (Settings) -> String, containerEvents: any ContainerEventSource,
        attachments: any AttachmentRecords
    ) {
        self.events = events
        self.processes = processes
        self.mover = mover
        self.clock = clock
        self.watch = watch
        self.loadPolicy = loadPolicy
        self.notifier = notifier
        self.netClsRoot = netClsRoot
        self.containerEvents = containerEvents
        self.attachments = attachments
    }

    /// The real machine: the proc connector, /proc, cgroupfs, inotify, the policy file, systemd,
    /// dockerd (the same `ContainerRuntimes` the kernel resolves containers with), /run/netshape/cni.
    public static let system = DaemonIO(
        events: { try ProcConnector() }, processes: ProcScanner(), mover: NetClsMover(), clock: SystemClock(),
        watch: { try DirectoryWatcher(create: $0, existing: $1) },
        loadPolicy: { try PolicySource.load($0, trusted: true).0 }, notifier: Systemd(),
        netClsRoot: { NetClsHierarchy.find(configured: $0.cgroupRoot)?.root ?? "/sys/fs/cgroup/net_cls" },
        containerEvents: ContainerRuntimes(), attachments: CNIAttachmentStore())
}

struct NetClsMover: CgroupMover {
    func move(pid: Int32, to relative: String, root: String) throws {
        try NetClsHierarchy(root: root).move(pid: pid, to: relative)
    }
}

struct SystemClock: DaemonClock {
    func monotonicNanoseconds() -> UInt64 { ProcConnector.monotonicNanoseconds() }
    func sleep(milliseconds: Int) { Syscall.sleep(milliseconds: milliseconds) }
}

struct Systemd: ServiceNotifier {
    func send(_ state: String) { SystemdNotify.send(state) }
}
