import Logging
import NetshapeCore
import NetshapeEngine
import NetshapeKernel
import NetshapePolicy
import ServiceLifecycle
import Synchronization
import UnixSignals

/// What the exec fast path needs, built after every apply and swapped whole: which policy namespace
/// a network namespace id belongs to, the rules, and where the net_cls hierarchy is.
struct ClassifierSnapshot: Sendable {
    var namespaces: [String: DesiredNamespace]
    /// Per namespace id, the /proc fields its rules read.
    var fields: [String: ProcScanner.Fields]
    var matcher: ProcessMatcher
    var netClsRoot: String
}

/// Moves a process into its class the moment the kernel reports its exec (or a uid/gid/comm
/// change). Runs on the connector's reader thread; touches only /proc and cgroupfs, never netlink.
final class ExecClassifier: @unchecked Sendable {
    let snapshot: Mutex<ClassifierSnapshot?>
    let scanner = ProcScanner()
    let logger: Logger
    /// Moves made, for `status`-style accounting in logs and tests.
    let moves = Atomic<Int>(0)
    let health: DaemonHealth

    init(logger: Logger, health: DaemonHealth = .off) {
        self.snapshot = Mutex(nil)
        self.logger = logger
        self.health = health
    }

    func update(_ s: ClassifierSnapshot) { snapshot.withLock { $0 = s } }

    /// Classifies `tgid`; returns the class path it was moved to, if any.
    @discardableResult
    func handle(tgid: Int32, reason: String, timestampNS: UInt64?) -> String? {
        // Cheapest first: most processes on a host live in no namespace of the policy, and one stat
        // of /proc/PID/ns/net says so. Then only the fields the rules read.
        guard let snap = snapshot.withLock({ $0 }), let nsid = scanner.namespaceID(tgid),
            let ns = snap.namespaces[nsid], let info = scanner.process(tgid, fields: snap.fields[nsid] ?? .all),
            let cls = snap.matcher.classify(info, in: ns), let name = cls.name
        else { return nil }
        let path = CgroupPaths.class(name, in: ns.name)
        // The current cgroup is not read: moving a process into the cgroup it is in is a no-op.
        do {
            try NetClsHierarchy(root: snap.netClsRoot).move(pid: tgid, to: path)
            moves.add(1, ordering: .relaxed)
            health.classified.increment()
            var meta: Logger.Metadata = [
                "pid": "\(tgid)", "comm": "\(info.comm)", "class": "\(ns.name)/\(name)", "on": "\(reason)",
            ]
            if let ts = timestampNS {
                let now = ProcConnector.monotonicNanoseconds()
                if now > ts { meta["latency_us"] = "\((now - ts) / 1000)" }
            }
            logger.info("classified \(tgid) (\(info.comm)) into \(ns.name)/\(name)", metadata: meta)
            return path
        } catch let e as KernelError where e.errno == KernelErrno.ESRCH {
            return nil  // exited already
        } catch {
            logger.warning("could not classify \(tgid) (\(info.comm)) into \(ns.name)/\(name): \(error)")
            return nil
        }
    }
}

/// The daemon's serialized core: the running policy, the engine, and reconciliation.
actor DaemonCore {
    private(set) var policy: Policy
    let path: String
    let engine: Engine
    let state: StateStore
    let classifier: ExecClassifier
    let logger: Logger
    var waiting: [String: String] = [:]
    /// The CNI plugin's pod attachments (see CNIAttachments.swift): name → "" when followed, else why not.
    var cni: CNIAttachments?
    var attachmentStatus: [String: String] = [:]

    init(policy: Policy, path: String, engine: Engine, state: StateStore, classifier: ExecClassifier, logger: Logger) {
        self.policy = policy
        self.path = path
        self.engine = engine
        self.state = state
        self.classifier = classifier
        self.logger = logger
    }

    /// Converges the machine to the running policy: repairs drift, applies to namespaces that
    /// appeared, classifies processes whose events were missed. Namespaces that are not there are
    /// waited for, without disturbing the others.
    @discardableResult
    func reconcile(_ reason: String) throws -> ApplyReport {
        let started = ContinuousClock.now
        var result: ApplyReport?
        defer {
            classifier.health.reconciled(
                ok: result != nil, since: started, moved: result.map { $0.performed.filter(\.isMembership).count } ?? 0,
                policy: policy)
        }
        // The same lock as the CLI's mutating commands, held only while changing the machine.
        try state.lock()
        defer { state.unlock() }
        let report = try engine.apply(policy, policyPath: path, options: ApplyOptions(skipUnreachable: true))
        let config = report.performed.filter { !$0.isMembership }
        if !config.isEmpty {
            logger.notice("\(reason): made \(config.count) change(s) to converge to \(policy.source)")
        }
        let moved = report.performed.count - config.count
        if moved > 0 { logger.info("\(reason): classified \(moved) process(es) found in /proc") }
        for (name, problem) in report.skipped where waiting[name] != problem {
            logger.warning("namespace \(name) is not there; waiting for it: \(problem)")
        }
        for name in waiting.keys where report.skipped[name] == nil {
            logger.notice("namespace \(name) appeared and is shaped")
        }
        waiting = report.skipped
        if !report.remaining.isEmpty {
            logger.error(
                "after \(reason), \(report.remaining.count) difference(s) remain: \(report.remaining.map(\.command))")
        }
        let pods = reconcileAttachments(reason)
        if let state = report.state { classifier.update(Self.snapshot(state, policy: policy, attachments: pods)) }
        result = report
        return report
    }

    /// Reads the policy file again. A valid policy replaces the running one and is applied as a
    /// diff; an invalid one is logged with FILE:LINE:COL and the running policy stays in force.
    func reload() -> Bool {
        do {
            // The same loader and file-safety rule as `netshape apply` and daemon start.
            let (new, _) = try PolicySource.load(path, trusted: true)
            let old = policy
            policy = new
            do {
                try reconcile("reload")
                logger.notice("reloaded \(path)")
                return true
            } catch {
                policy = old
                logger.error("reload of \(path) failed, keeping the running policy: \(error)")
                _ = try? reconcile("restore after failed reload")
                return false
            }
        } catch let e as PolicyError {
            for d in e.diagnostics { logger.error("\(d.description)") }
            logger.error("reload rejected: \(path) is invalid; the running policy stays in force")
            return false
        } catch let e as PolicyFileError {
            logger.error("reload rejected: \(e.message); the running policy stays in force")
            return false
        } catch {
            logger.error("reload rejected: cannot read \(path): \(error); the running policy stays in force")
            return false
        }
    }

    static func snapshot(_ state: PlanResult, policy: Policy) -> ClassifierSnapshot {
        var byNetns: [String: DesiredNamespace] = [:]
        var fields: [String: ProcScanner.Fields] = [:]
        for ns in state.desired.namespaces {
            guard let id = state.observed.namespaces[ns.name]?.netnsID, !id.isEmpty else { continue }
            byNetns[id] = ns
            fields[id] = ns.classes.reduce(into: ProcScanner.Fields()) {
                $0.formUnion(ProcScanner.Fields(for: $1.match))
            }
        }
        let root = NetClsHierarchy.find(configured: policy.settings.cgroupRoot)?.root ?? "/sys/fs/cgroup/net_cls"
        return ClassifierSnapshot(
            namespaces: byNetns, fields: fields, matcher: Engine.matcher(policy, state.observed),
            netClsRoot: root)
    }
}

/// Exec events → classification, on a dedicated thread (the connector read blocks); lost events
/// (ENOBUFS) trigger a full rescan instead of only a log line.
struct ProcEventService: Service {
    let core: DaemonCore
    let classifier: ExecClassifier
    let logger: Logger

    func run() async throws {
        let connector = try ProcConnector()
        let stop = Atomic<Bool>(false)
        let overflow = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let classifier = self.classifier
        let box = UncheckedBox(connector)
        try startThread(name: "netshape-procev") {
            while !stop.load(ordering: .relaxed) {
                switch try? box.value.next(timeoutMilliseconds: 200) {
                case .events(let events):
                    for e in events {
                        switch e {
                        case .exec(let t, let ts): classifier.handle(tgid: t, reason: "exec", timestampNS: ts)
                        case .identity(let t, let ts):
                            classifier.handle(tgid: t, reason: "uid/gid change", timestampNS: ts)
                        case .comm(let t, let ts): classifier.handle(tgid: t, reason: "comm change", timestampNS: ts)
                        }
                    }
                case .overflow:
                    classifier.health.eventsLost.increment()
                    overflow.continuation.yield()
                case .timeout, .none: continue
                }
            }
        }
        logger.info("listening for exec events (netlink proc connector)")
        defer { stop.store(true, ordering: .relaxed) }
        for await _ in overflow.stream.cancelOnGracefulShutdown() {
            logger.warning("proc connector overflowed (events lost): rescanning /proc")
            do { try await core.reconcile("rescan after lost events") } catch {
                logger.error("rescan failed: \(error)")
            }
        }
    }
}

/// A periodic cheap re-verify (dump and diff) that repairs drift and picks up namespaces; a new
/// file in /run/netns, docker's netns directory or the directory of a path target wakes it at once.
struct ReconcileService: Service {
    let core: DaemonCore
    let interval: Double
    let logger: Logger

    func run() async throws {
        let changes = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let stop = Atomic<Bool>(false)
        // Where namespace files appear: `ip netns`, docker, and the directories of the policy's path targets.
        var dirs = ["/var/run/docker/netns", "/run/docker/netns"]
        for ns in await core.policy.namespaces {
            if case .path(let p) = ns.netns, let slash = p.lastIndex(of: "/") { dirs.append(String(p[..<slash])) }
        }
        if let watcher = try? DirectoryWatcher(create: ["/run/netns", CNIAttachmentStore().directory], existing: dirs) {
            let box = UncheckedBox(watcher)
            try? startThread(name: "netshape-netns") {
                while !stop.load(ordering: .relaxed) {
                    if box.value.wait(timeoutMilliseconds: 250) { changes.continuation.yield() }
                }
            }
        }
        defer { stop.store(true, ordering: .relaxed) }
        let ticker = AsyncStream<Void> { c in
            let task = Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(Int(interval * 1000)))
                    c.yield()
                }
            }
            c.onTermination = { _ in task.cancel() }
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await _ in ticker.cancelOnGracefulShutdown() { await self.tick("periodic check") }
            }
            group.addTask {
                for await _ in changes.stream.cancelOnGracefulShutdown() {
                    // Let the creator finish moving the device in before looking.
                    try? await Task.sleep(for: .milliseconds(300))
                    await self.tick("namespaces changed")
                }
            }
            await group.waitForAll()
        }
    }

    func tick(_ reason: String) async {
        do { try await core.reconcile(reason) } catch { logger.error("\(reason) failed: \(error)") }
    }
}

/// SIGHUP reloads the policy; systemd hears RELOADING=1 then READY=1.
struct ReloadService: Service {
    let core: DaemonCore
    let logger: Logger

    func run() async throws {
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            let usec = ProcConnector.monotonicNanoseconds() / 1000
            SystemdNotify.send("RELOADING=1\nMONOTONIC_USEC=\(usec)")
            logger.notice("SIGHUP: reloading")
            core.classifier.health.reloaded(ok: await core.reload())
            SystemdNotify.send("READY=1")
        }
    }
}

/// Pings systemd's watchdog at half its interval while the core answers.
struct WatchdogService: Service {
    let core: DaemonCore
    let microseconds: UInt64

    func run() async throws {
        let period = Duration.microseconds(Int64(microseconds / 2))
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            _ = await core.waiting  // the actor answers: the daemon is not wedged
            SystemdNotify.send("WATCHDOG=1")
            try? await Task.sleep(for: period)
        }
    }
}

/// A value handed to a thread that owns it from then on.
final class UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// `netshape daemon POLICY`: apply, then keep the machine converged.
public struct Daemon {
    public let policy: Policy
    public let path: String
    public let interval: Double
    /// Keep cgroup migrations fast (see `FastMigrations`).
    public let favorDynmods: Bool
    public let logger: Logger
    /// Rebuilds a recorded CNI attachment's policy (the CLI owns CNI decoding); nil: pods not followed.
    public let cniPolicy: (@Sendable (CNIAttachment) throws -> Policy)?
    /// `HOST:PORT` to serve Prometheus metrics on; nil = no endpoint.
    public let metrics: String?

    public init(
        policy: Policy, path: String, interval: Double, favorDynmods: Bool = true, metrics: String? = nil,
        cniPolicy: (@Sendable (CNIAttachment) throws -> Policy)? = nil, logger: Logger
    ) {
        self.policy = policy
        self.path = path
        self.interval = interval
        self.favorDynmods = favorDynmods
        self.cniPolicy = cniPolicy
        self.metrics = metrics
        self.logger = logger
    }

    /// Runs until SIGTERM or SIGINT; the shaping stays in place (it is kernel state; `reset` removes it).
    public func run() async throws {
        var mountedDynmods = false
        if favorDynmods {
            do {
                mountedDynmods = try FastMigrations.enable()
                if mountedDynmods {
                    logger.notice(
                        "cgroup migrations in fast mode (favordynmods hierarchy at \(FastMigrations.mountPoint)); --no-favor-dynmods turns this off"
                    )
                }
            } catch {
                let e = (error as? KernelError)?.errno
                let why =
                    e == KernelErrno.EACCES || e == KernelErrno.EPERM
                    ? "mounting a cgroup hierarchy was refused (needs CAP_SYS_ADMIN in the initial user namespace)"
                    : e == KernelErrno.EINVAL ? "favordynmods needs Linux 6.0" : "the mount failed"
                logger.warning(
                    "cannot enable fast cgroup migrations (\(why)): \(error); moves after idle periods will take an RCU grace period"
                )
            }
        }
        defer { if mountedDynmods { FastMigrations.disable() } }
        let kernel = LinuxKernel(settings: policy.settings)
        let runtimes = kernel.runtimes
        var endpoint: MetricsService?
        var health = DaemonHealth.off
        if let address = metrics {
            (endpoint, health) = try MetricsService.make(address: address, logger: logger)
        }
        let classifier = ExecClassifier(logger: logger, health: health)
        let core = DaemonCore(
            policy: policy, path: path, engine: Engine(kernel: kernel, logger: logger),
            state: kernel.state, classifier: classifier, logger: logger)
        if let f = cniPolicy { await core.follow(CNIAttachments(store: CNIAttachmentStore(), policy: f)) }
        let report = try await core.reconcile("start")
        logger.notice("applied \(path): \(report.performed.count) change(s); watching for new processes")
        var services: [any Service] = [
            ProcEventService(core: core, classifier: classifier, logger: logger),
            ReconcileService(core: core, interval: interval, logger: logger),
            ReloadService(core: core, logger: logger),
            ContainerEventService(core: core, runtimes: runtimes, logger: logger),
        ]
        if let e = endpoint { services.append(e) }
        if let usec = SystemdNotify.watchdogMicroseconds {
            services.append(WatchdogService(core: core, microseconds: usec))
        }
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        SystemdNotify.send("READY=1\nSTATUS=shaping \(policy.namespaces.count) namespace(s)")
        try await group.run()
        SystemdNotify.send("STOPPING=1")
        logger.notice("stopped; the shaping stays in place (netshape reset removes it)")
    }
}
