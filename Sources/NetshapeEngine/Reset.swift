import NetshapeCore

/// What a `reset` did.
public struct ResetReport: Sendable {
    /// Operations performed, in order.
    public var performed: [Operation] = []
    /// Processes that exited before they could be moved back (not a failure).
    public var vanished: [Int32] = []
    /// Foreign objects found inside netshape's trees and directories, left as they are.
    public var foreign: [String] = []
    /// Entries reset (their record is gone unless something of them had to stay).
    public var namespaces: [String] = []
}

/// A `reset` that could not remove everything netshape made: what was removed, what was not, and why.
public struct ResetError: Error, CustomStringConvertible {
    public var report: ResetReport
    /// netshape objects left because something foreign is inside them.
    public var blocked: [String]
    /// Removals the kernel refused.
    public var failures: [(Operation, any Error)]

    public var description: String {
        var lines = ["removed \(report.performed.count) object(s), but not everything netshape made:"]
        lines += blocked.map { "  left \($0)" }
        lines += report.foreign.map { "  left (not netshape's) \($0)" }
        lines += failures.map { "  failed: \($0.0.command): \($0.1)" }
        lines.append("netshape's record keeps what is left: remove the cause and run reset again")
        return lines.joined(separator: "\n")
    }
}

extension Engine {
    /// Removes everything netshape recorded making for `policyPath`'s entries (and, where `policy` is
    /// given, a tree with its handle and filter whose record was lost): processes go back to the root
    /// net_cls cgroup, netshape's cgroups are removed, trees netshape owns are deleted, provisioned
    /// links and namespaces go. Works from the ownership record alone, so a policy file that was
    /// edited or deleted since it was applied is still reset. Foreign objects are never touched.
    /// Continues past individual failures; throws `ResetError` naming what is left.
    public func reset(policyPath: String, policy: Policy?) throws -> ResetReport {
        let record = try kernel.loadOwnership()
        var names = record.namespaces.filter { $0.value.policy == policyPath }.map(\.key)
        // Entries of the policy with no record at all: a lost record (tmpfs, a crash). Their trees
        // are recognised by handle and filter, their cgroups by netshape's own path.
        for ns in policy?.namespaces ?? [] where record.namespaces[ns.name] == nil { names.append(ns.name) }
        return try reset(names: names.sorted(), policy: policy)
    }

    /// `reset --all`: everything netshape's record says it made on this host, every policy and CNI
    /// attachment, and nothing else.
    public func resetAll() throws -> ResetReport {
        let record = try kernel.loadOwnership()
        return try reset(names: record.namespaces.keys.sorted(), policy: nil)
    }

    /// The old entry point: resets `policy`'s entries, with the policy's source as its path.
    public func reset(_ policy: Policy) throws -> ResetReport {
        try reset(policyPath: policy.source, policy: policy)
    }

    func reset(names: [String], policy: Policy?) throws -> ResetReport {
        let recorded = try kernel.loadOwnership()
        let requests = names.map { Self.request(for: $0, record: recorded.namespaces[$0], policy: policy) }
        let observed = try kernel.observe(ObservationRequest(namespaces: requests, processes: true))
        var adopt: [String: TCHandle] = [:]
        if let policy {
            let caps = try kernel.capabilities()
            let desired = try Planner.plan(
                policy, capabilities: caps, previous: observed.previousAssignments(for: policy))
            for ns in desired.namespaces where names.contains(ns.name) { adopt[ns.name] = ns.qdisc.handle }
        }
        let plan = Differ.resetPlan(namespaces: names, observed, adopt: adopt)
        var report = ResetReport(foreign: plan.foreign, namespaces: names)
        var failures: [(Operation, any Error)] = []
        for op in plan.operations.map({ $0.resolved(in: observed) }) {
            switch execute(op) {
            case .done:
                report.performed.append(op)
                logger.info("\(op.command)", metadata: ["namespace": "\(op.namespace)"])
            case .vanished(let pid): if let pid { report.vanished.append(pid) }
            case .failed(let error): failures.append((op, error))
            }
        }
        // The record forgets exactly what was removed; an entry with nothing left goes.
        var record = observed.ownership
        record.forget(report.performed)
        let stuck = Set(failures.map(\.0.namespace)).union(plan.blocked.isEmpty ? [] : names)
        for n in names {
            guard var e = record.namespaces[n] else { continue }
            if !stuck.contains(n) {
                record.namespaces[n] = nil
                continue
            }
            // What was not observed cannot be left: a tree whose namespace is gone went with it.
            if observed.namespaces[n]?.problem != nil {
                e.egress = nil
                e.ingress = nil
                e.cgroup2Classifier = nil
            }
            e.cgroups = e.cgroups?.filter { observed.cgroups[$0] != nil }
            if failures.contains(where: { $0.0.namespace == n && $0.0.object == "sockcreate" }) {
                e.sockCookie = observed.ownership.namespaces[n]?.sockCookie
            }
            record.namespaces[n] = e.isEmpty ? nil : e
        }
        // A reset interrupted after its detach left the flag: nothing of this record is attached.
        if observed.sockCreate?.attached == false { record.sockCreate = nil }
        if record != observed.ownership { try kernel.saveOwnership(record) }
        if !failures.isEmpty || !plan.blocked.isEmpty {
            throw ResetError(report: report, blocked: plan.blocked, failures: failures)
        }
        return report
    }

    /// What to observe to reset entry `name`: its recorded target and device, else the policy's.
    static func request(for name: String, record: OwnershipRecord.Namespace?, policy: Policy?) -> NamespaceRequest {
        let ns = policy?.namespace(name)
        let provision =
            record?.provisioned.map { p in Provision(hostDevice: p.hostDevice ?? "", bridge: p.bridge) }
            ?? ns?.provision
        let target = record?.target ?? ns?.netns ?? .path("/nonexistent/netshape-record-without-target/\(name)")
        let device = record?.egress?.device ?? record?.device ?? ns?.device ?? (provision != nil ? "eth0" : nil)
        return NamespaceRequest(name: name, target: target, device: device, ingress: true, provision: provision)
    }
}
