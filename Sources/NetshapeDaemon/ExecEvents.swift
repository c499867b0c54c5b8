import Logging
import NetshapeCore
import NetshapeEngine
import NetshapeKernel
import NetshapePolicy
import ServiceLifecycle
import Synchronization

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
    let processes: any ProcessTable
    let mover: any CgroupMover
    let clock: any DaemonClock
    let logger: Logger
    /// Moves made, for `status`-style accounting in logs and tests.
    let moves = Atomic<Int>(0)
    let health: DaemonHealth

    init(logger: Logger, health: DaemonHealth = .off, io: DaemonIO = .system) {
        self.snapshot = Mutex(nil)
        self.processes = io.processes
        self.mover = io.mover
        self.clock = io.clock
        self.logger = logger
        self.health = health
    }

    func update(_ s: ClassifierSnapshot) { snapshot.withLock { $0 = s } }

    /// Classifies `tgid`; returns the class path it was moved to, if any.
    @discardableResult
    func handle(tgid: Int32, reason: String, timestampNS: UInt64?) -> String? {
        // Cheapest first: most processes on a host live in no namespace of the policy, and one stat
        // of /proc/PID/ns/net says so. Then only the fields the rules read.
        guard let snap = snapshot.withLock({ $0 }), let nsid = processes.namespaceID(tgid),
            let ns = snap.namespaces[nsid], let info = processes.process(tgid, fields: snap.fields[nsid] ?? .all),
            let cls = snap.matcher.classify(info, in: ns), let name = cls.name
        else { return nil }
        let path = CgroupPaths.class(name, in: ns.name)
        // The current cgroup is not read: moving a process into the cgroup it is in is a no-op.
        do {
            try mover.move(pid: tgid, to: path, root: snap.netClsRoot)
            moves.add(1, ordering: .relaxed)
            health.classified.increment()
            var meta: Logger.Metadata = [
                "pid": "\(tgid)", "comm": "\(info.comm)", "class": "\(ns.name)/\(name)", "on": "\(reason)",
            ]
            if let ts = timestampNS {
                let now = clock.monotonicNanoseconds()
                if now > ts { meta["latency_us"] = "\((now - ts) / 1000)" }
            }
            logger.info("classified \(tgid) (\(info.comm)) into \(ns.name)/\(name)", metadata: meta)
            return path
        } catch let e as any KernelFailure where e.errno == KernelErrno.ESRCH {
            return nil  // exited already
        } catch {
            logger.warning("could not classify \(tgid) (\(info.comm)) into \(ns.name)/\(name): \(error)")
            return nil
        }
    }
}

/// The exec thread's loop body, one read at a time (tests step it without a thread). A read
/// error is logged, counted (`netshape_exec_event_errors_total`) and waited out, twice as long
/// each time it repeats (up to `maxBackoffMilliseconds`), and the thread's heartbeat says it is
/// failing meanwhile, so the watchdog stops pinging; a later good read resets both.
final class ExecEventPump {
    let source: any ProcessEvents
    let classifier: ExecClassifier
    let clock: any DaemonClock
    let heartbeat: Heartbeat
    let logger: Logger
    /// Called when events were lost: the caller rescans /proc.
    let overflow: () -> Void
    /// Read errors in a row.
    private(set) var failures = 0

    static let firstBackoffMilliseconds = 100
    static let maxBackoffMilliseconds = 5000

    init(
        source: any ProcessEvents, classifier: ExecClassifier, clock: any DaemonClock, heartbeat: Heartbeat,
        logger: Logger, overflow: @escaping () -> Void
    ) {
        self.source = source
        self.classifier = classifier
        self.clock = clock
        self.heartbeat = heartbeat
        self.logger = logger
        self.overflow = overflow
    }

    /// The pause after the `n`th error in a row.
    static func backoff(afterFailures n: Int) -> Int {
        min(maxBackoffMilliseconds, firstBackoffMilliseconds << min(max(n - 1, 0), 16))
    }

    func step(timeoutMilliseconds: Int32 = 200) {
        let read: ProcConnectorRead
        do {
            read = try source.next(timeoutMilliseconds: timeoutMilliseconds)
        } catch {
            failures += 1
            classifier.health.eventErrors.increment()
            let pause = Self.backoff(afterFailures: failures)
            heartbeat.failing("reading exec events failed \(failures) time(s) in a row: \(error)")
            logger.error(
                "reading exec events failed (\(failures) in a row), retrying in \(pause) ms: \(error)",
                metadata: ["errors_in_a_row": "\(failures)"])
            clock.sleep(milliseconds: pause)
            return
        }
        if failures > 0 {
            logger.notice("reading exec events again after \(failures) error(s)")
            failures = 0
        }
        heartbeat.alive()
        switch read {
        case .events(let events):
            for e in events {
                switch e {
                case .exec(let t, let ts): classifier.handle(tgid: t, reason: "exec", timestampNS: ts)
                case .identity(let t, let ts): classifier.handle(tgid: t, reason: "uid/gid change", timestampNS: ts)
                case .comm(let t, let ts): classifier.handle(tgid: t, reason: "comm change", timestampNS: ts)
                }
            }
        case .overflow:
            classifier.health.eventsLost.increment()
            overflow()
        case .timeout: break
        }
    }
}

/// Exec events → classification, on a dedicated thread (the connector read blocks); lost events
/// (ENOBUFS) trigger a full rescan instead of only a log line.
struct ProcEventService: DaemonService {
    let context: DaemonContext

    func run() async throws {
        let overflow = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let stop = Atomic<Bool>(false)
        let pump = UncheckedBox(
            ExecEventPump(
                source: try io.events(), classifier: classifier, clock: io.clock,
                heartbeat: liveness.register("exec events"), logger: logger,
                overflow: { overflow.continuation.yield() }))
        try startThread(name: "netshape-procev") {
            while !stop.load(ordering: .relaxed) { pump.value.step() }
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
