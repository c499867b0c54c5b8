import Logging
import NetshapeCore
import NetshapeEngine
import NetshapeKernel
import NetshapePolicy
import ServiceLifecycle
import Synchronization

/// The daemon's serialized core: the running policy, the engine, and reconciliation.
actor DaemonCore {
    private(set) var policy: Policy
    let path: String
    let engine: Engine
    let state: StateStore
    let classifier: ExecClassifier
    let io: DaemonIO
    let logger: Logger
    var waiting: [String: String] = [:]
    /// The CNI plugin's pod attachments (see CNIAttachments.swift): name → "" when followed, else why not.
    var cni: CNIAttachments?
    var attachmentStatus: [String: String] = [:]

    init(
        policy: Policy, path: String, engine: Engine, state: StateStore, classifier: ExecClassifier,
        io: DaemonIO = .system, logger: Logger
    ) {
        self.io = io
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
        if let state = report.state {
            classifier.update(
                Self.snapshot(state, policy: policy, attachments: pods, netClsRoot: io.netClsRoot(policy.settings)))
        }
        result = report
        return report
    }

    /// Reads the policy file again. A valid policy replaces the running one and is applied as a
    /// diff; an invalid one is logged with FILE:LINE:COL and the running policy stays in force.
    func reload() -> Bool {
        do {
            // The same loader and file-safety rule as `netshape apply` and daemon start.
            let new = try io.loadPolicy(path)
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

    static func snapshot(_ state: PlanResult, policy: Policy, netClsRoot root: String) -> ClassifierSnapshot {
        var byNetns: [String: DesiredNamespace] = [:]
        var fields: [String: ProcScanner.Fields] = [:]
        for ns in state.desired.namespaces {
            guard let id = state.observed.namespaces[ns.name]?.netnsID, !id.isEmpty else { continue }
            byNetns[id] = ns
            fields[id] = ns.classes.reduce(into: ProcScanner.Fields()) {
                $0.formUnion(ProcScanner.Fields(for: $1.match))
            }
        }
        return ClassifierSnapshot(
            namespaces: byNetns, fields: fields, matcher: Engine.matcher(policy, state.observed),
            netClsRoot: root)
    }
}
