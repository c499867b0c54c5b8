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
