import Logging
import NetshapeCore

/// Everything one planning pass saw and decided.
public struct PlanResult: Sendable {
    public var capabilities: KernelCapabilities
    public var observed: ObservedState
    public var desired: DesiredState
    public var operations: [Operation]
    /// Namespaces left out because they are not there (yet), with why (`skipUnreachable` only).
    public var skipped: [String: String] = [:]
    /// Entries this policy's record has that the policy no longer names: their removal is the tail
    /// of `operations`.
    public var retired: [String] = []
}

/// What an `apply` (or `reset`) did.
public struct ApplyReport: Sendable {
    /// Operations performed, in order (empty: the machine already matched).
    public var performed: [Operation]
    /// Processes that exited before they could be moved (not a failure).
    public var vanished: [Int32]
    public var notes: [String]
    /// Differences found by the verification pass after applying (empty: converged).
    public var remaining: [Operation]
    /// Namespaces left out because they are not there (yet) (`skipUnreachable` only).
    public var skipped: [String: String] = [:]
    /// The machine as the last pass saw it, and what it should be.
    public var state: PlanResult?
}

/// A failed `apply`: which operation failed, why, and how the rollback went.
public struct ApplyError: Error, CustomStringConvertible {
    public var failed: Operation
    public var underlying: any Error
    /// Operations undone, newest first.
    public var rolledBack: [Operation]
    /// Inverse operations that failed in their turn (the machine may need `reset`).
    public var rollbackFailures: [(Operation, any Error)]

    public var description: String {
        var s = Self.naming(failed, underlying)
        if rollbackFailures.isEmpty {
            s +=
                rolledBack.isEmpty
                ? " (nothing had changed)" : "; rolled back the \(rolledBack.count) change(s) this run made"
        } else {
            s += "; rollback failed for: " + rollbackFailures.map { Self.naming($0.0, $0.1) }.joined(separator: "; ")
        }
        return s
    }

    /// "COMMAND: ERROR", once: kernel errors already name the command they ran.
    static func naming(_ op: Operation, _ error: any Error) -> String {
        let text = "\(error)"
        return text.hasPrefix(op.command + ":") ? text : "\(op.command): \(text)"
    }
}

/// Options of `apply`.
public struct ApplyOptions: Sendable {
    public var force: Bool
    public var memberships: Bool
    /// Leave out namespaces that do not exist (yet) instead of failing: the daemon waits for them.
    public var skipUnreachable: Bool
    public init(force: Bool = false, memberships: Bool = true, skipUnreachable: Bool = false) {
        self.force = force
        self.memberships = memberships
        self.skipUnreachable = skipUnreachable
    }
}

/// observe → plan → apply → verify, for every front end (CLI, daemon).
///
/// Idempotence contract: applying the same policy twice performs no operation the second time;
/// an edited policy produces only the operations that differ (a rate edit is one `class change`).
/// Locking is the caller's: the CLI holds /run/netshape/lock around each mutating command.
/// Privileges: whatever the kernel port needs (CAP_NET_ADMIN, CAP_SYS_ADMIN for setns and mounts).
public final class Engine {
    let kernel: KernelPort
    let logger: Logger

    public init(kernel: KernelPort, logger: Logger = Logger(label: "netshape.engine")) {
        self.kernel = kernel
        self.logger = logger
    }

    /// Observes the machine and computes what `apply` would do, changing nothing. Namespaces that
    /// `provision` will create are planned as if they existed with a bare device.
    ///
    /// `policyPath` (absolute; default the policy's source) is who claims the policy's entries: an
    /// entry or device another policy's record owns is refused here, before anything changes.
    public func plan(_ policy: Policy, policyPath: String? = nil, options: ApplyOptions = ApplyOptions()) throws
        -> PlanResult
    {
        let caps = try kernel.capabilities()
        var policy = try expandingContainers(policy)
        // Entries recorded for this policy that it no longer has are removed like `reset` removes them.
        let path = policyPath ?? policy.source
        let record = try kernel.loadOwnership()
        let retired = record.namespaces.filter { $0.value.policy == path && policy.namespace($0.key) == nil }
            .keys.sorted()
        var request = ObservationRequest(policy: policy, processes: options.memberships)
        // Memberships come from /proc; only cgroups the plan may remove (ones the policy no longer
        // names) need their members read, so that they can be emptied first.
        request.cgroupsWithoutMembers = Set(
            [CgroupPaths.top]
                + policy.namespaces.flatMap { ns in
                    [CgroupPaths.namespace(ns.name)] + ns.classes.map { CgroupPaths.class($0.name, in: ns.name) }
                })
        request.namespaces += retired.map { Self.request(for: $0, record: record.namespaces[$0], policy: nil) }
        if !retired.isEmpty { request.processes = true }
        var observed = try kernel.observe(request)
        var skipped: [String: String] = [:]
        if options.skipUnreachable {
            for ns in policy.namespaces where ns.provision == nil {
                if let problem = observed.namespaces[ns.name]?.problem { skipped[ns.name] = problem }
            }
            policy.namespaces.removeAll { skipped[$0.name] != nil }
        }
        var desired = try Planner.plan(policy, capabilities: caps, previous: observed.previousAssignments(for: policy))
        try Self.readMembers(of: request.cgroupsWithoutMembers, desired, into: &observed, kernel)
        try Differ.checkClaims(desired, observed, policyPath: path)
        let (provisioning, notes) = Differ.provisioning(desired, observed)
        desired.notes += notes + observed.notes
        for ns in policy.namespaces where ns.netns == .host && ns.device == nil {
            // The host's default-route device is its uplink: say so rather than shape it silently.
            guard let dev = observed.namespaces[ns.name]?.device, !dev.isEmpty else { continue }
            desired.notes.append(
                "namespace \(ns.name): no device given: shaping \(dev), the host's default-route device "
                    + "(write device = \"\(dev)\" to pin it)")
        }
        if !provisioning.isEmpty { observed = Self.assumingProvisioned(observed, desired, provisioning) }
        let ops = try Differ.diff(
            desired, observed, matcher: Self.matcher(policy, observed),
            options: DiffOptions(force: options.force, memberships: options.memberships, retiring: Set(retired)),
            notes: &desired.notes)
        var seenNotes = Set<String>()
        desired.notes = desired.notes.filter { seenNotes.insert($0).inserted }  // u32 dumps a filter twice
        let retirement = Differ.resetPlan(namespaces: retired, observed, sockCreate: false)
        desired.notes += retirement.foreign.map { "left \($0)" } + retirement.blocked.map { "left \($0)" }
        desired.notes += retired.map {
            "namespace \($0) is no longer in the policy: removing what netshape made for it"
        }
        return PlanResult(
            capabilities: caps, observed: observed, desired: desired,
            operations: provisioning + ops + retirement.operations, skipped: skipped, retired: retired)
    }

    /// Reads the members of the cgroups the policy names but the plan removes after all: a class
    /// that now goes by cgroup v2 path keeps no net_cls cgroup, and the one it had must be emptied
    /// before it can go. Which classes those are is the planner's decision (capabilities, the other
    /// classes), known only after the first observation.
    static func readMembers(
        of skipped: Set<String>, _ desired: DesiredState, into observed: inout ObservedState, _ kernel: KernelPort
    ) throws {
        var kept = Set<String>()
        for ns in desired.namespaces where !ns.cgroups.isEmpty {
            kept.formUnion([CgroupPaths.top, CgroupPaths.namespace(ns.name)] + ns.cgroups.map(\.relativePath))
        }
        let unread = skipped.filter { !kept.contains($0) && observed.cgroups[$0] != nil }
        guard !unread.isEmpty else { return }
        var request = ObservationRequest(namespaces: [], processes: false)
        request.cgroupPaths = unread
        let fresh = try kernel.observe(request)
        for path in unread { observed.cgroups[path] = fresh.cgroups[path] }
    }

    /// `observed` with the namespaces `provisioning` creates stood in by empty ones.
    static func assumingProvisioned(
        _ observed: ObservedState, _ desired: DesiredState,
        _ provisioning: [Operation]
    ) -> ObservedState {
        var o = observed
        for case let op in provisioning {
            guard case .createVeth(let host, let peer, _) = op.action, let ns = desired.namespace(op.namespace) else {
                continue
            }
            o.namespaces[ns.name] = ObservedNamespace(
                name: ns.name, device: peer,
                ingress: ns.ingressPlan == nil
                    ? nil : ObservedIngress(placement: .peer, device: host, netnsID: "", ifindex: 0))
        }
        return o
    }

    /// Converges the machine to `policy`. `policyPath` (absolute) is recorded as the owner of what
    /// this creates. On failure, undoes this run's changes and throws `ApplyError`.
    public func apply(_ policy: Policy, policyPath: String, options: ApplyOptions = ApplyOptions()) throws
        -> ApplyReport
    {
        // Expanded once, so that the plan, the record and the verification see the same instances.
        let policy = try expandingContainers(policy)
        var plan = try self.plan(policy, policyPath: policyPath, options: options)
        var report = ApplyReport(
            performed: [], vanished: [], notes: plan.desired.notes, remaining: [],
            skipped: plan.skipped, state: plan)
        guard !plan.operations.isEmpty else {
            _ = try keepRecord(plan.observed.ownership, plan.observed, plan.desired, policy, policyPath)
            return report
        }
        let before = plan.observed.ownership
        var record = before
        var done: [Operation] = []
        func fail(_ op: Operation, _ error: any Error) -> ApplyError {
            let rollback = self.rollback(done)
            // After a clean rollback the machine is as before, and so is the record. When some undo
            // failed, the larger record stays: it names what is left, so `reset` can still remove it.
            if record != before && rollback.failures.isEmpty { try? kernel.saveOwnership(before) }
            return ApplyError(
                failed: op, underlying: error, rolledBack: rollback.undone, rollbackFailures: rollback.failures)
        }

        // 1. Provisioning first: shaping needs the namespaces and links to exist. Ownership is
        //    recorded before anything is created, so a crash still leaves it removable by `reset`.
        let provisioning = plan.operations.filter { $0.isProvisioning && !plan.retired.contains($0.namespace) }
        if !provisioning.isEmpty {
            record.recordProvisioning(provisioning, policyPath: policyPath)
            try kernel.saveOwnership(record)
            if let (op, error) = perform(provisioning, in: plan.observed, &done, &report) { throw fail(op, error) }
            do {
                plan = try self.plan(policy, policyPath: policyPath, options: options)
            } catch {
                throw fail(provisioning[provisioning.count - 1], error)
            }
        }

        // 2. Shaping: record the trees this run creates, then build them.
        let shaping = plan.operations.filter { !$0.isProvisioning && !plan.retired.contains($0.namespace) }
        record.recordShaping(shaping, plan.observed, policy, policyPath: policyPath)
        if record != before { try kernel.saveOwnership(record) }
        if let (op, error) = perform(shaping, in: plan.observed, &done, &report) { throw fail(op, error) }

        // 2b. Entries dropped from the policy go last, after everything it still names converged: a
        //     failure before this point never has to rebuild them. Their records go when they are empty.
        let retiring = plan.operations.filter { plan.retired.contains($0.namespace) }
        if let (op, error) = perform(retiring, in: plan.observed, &done, &report) { throw fail(op, error) }
        if !plan.retired.isEmpty {
            record.forget(retiring)
            // As in reset: a tree whose namespace is gone (a removed container's) went with it.
            for name in plan.retired where plan.observed.namespaces[name]?.problem != nil {
                record.namespaces[name]?.egress = nil
                record.namespaces[name]?.ingress = nil
                record.namespaces[name]?.cgroup2Classifier = nil
            }
            for name in plan.retired where record.namespaces[name]?.isEmpty ?? true { record.namespaces[name] = nil }
            try kernel.saveOwnership(record)
        }
        report.performed = done

        // 3. Devices created in this run (an IFB, a provisioned veth) get their real ifindex into the
        //    ownership record now that they exist; then verify: dump again and diff. Configuration
        //    must match exactly; processes may have come and gone meanwhile, so memberships are not
        //    part of the check.
        //    Only what the operations touched is read back: the namespaces they changed and the
        //    cgroups they made, renumbered or removed. The rest is as the plan saw it a moment ago
        //    (the lock keeps other netshape runs out); a change made behind netshape's back outside
        //    that set shows in the next plan or status, which read everything.
        var verifyRequest = ObservationRequest(policy: verifyPolicy(policy, plan), processes: false)
        let touched = Set(done.map(\.namespace))
        verifyRequest.namespaces.removeAll { !touched.contains($0.name) }
        // A namespace where only classes of its own device changed (a rate edit) has only its
        // classes read back; its qdiscs, filters and ingress are as the plan saw them.
        // Of those classes, only the ones changed: the rest are as the plan saw them.
        for i in verifyRequest.namespaces.indices {
            let name = verifyRequest.namespaces[i].name
            var changed = Set<TCHandle>()
            verifyRequest.namespaces[i].classesOnly =
                plan.observed.namespaces[name]?.problem == nil
                && done.allSatisfy { op in
                    guard op.namespace == name else { return true }
                    if case .changeClass(let spec, _) = op.action, op.link == .namespace {
                        changed.insert(spec.classid)
                        return true
                    }
                    return false
                }
            if verifyRequest.namespaces[i].classesOnly { verifyRequest.namespaces[i].onlyClasses = changed }
        }
        let cgroupPaths = Set(done.compactMap(\.cgroupPath))
        verifyRequest.cgroups = !cgroupPaths.isEmpty
        verifyRequest.cgroupPaths = cgroupPaths
        // Members matter only in a cgroup that should be gone (they would have to be moved out).
        verifyRequest.cgroupsWithoutMembers = Set(
            done.compactMap { op in
                if case .removeCgroup = op.action { return nil }
                return op.cgroupPath
            })
        var after = Self.readBack(
            try kernel.observe(verifyRequest), over: plan.observed, cgroups: cgroupPaths,
            classesOnly: Set(verifyRequest.namespaces.filter(\.classesOnly).map(\.name)),
            onlyClasses: verifyRequest.namespaces.reduce(into: [:]) { $0[$1.name] = $1.onlyClasses })
        after.ownership = try keepRecord(record, after, plan.desired, policy, policyPath)
        var verifyNotes: [String] = []
        let verify = try Differ.diff(
            plan.desired, after, matcher: Self.matcher(policy, after),
            options: DiffOptions(force: false, memberships: false), notes: &verifyNotes)
        report.remaining = verify
        let verifyState = PlanResult(
            capabilities: plan.capabilities, observed: after, desired: plan.desired,
            operations: verify, skipped: plan.skipped)
        report.state = verifyState
        return report
    }

    /// `before` with what the verification read back in its place: the namespaces `fresh` observed
    /// (only their classes for those in `classesOnly`, and of those only the ones in `onlyClasses`
    /// when it names the namespace: one missing is gone), and the cgroups at `cgroups` (a missing
    /// one is gone, and leaves its parent's children).
    static func readBack(
        _ fresh: ObservedState, over before: ObservedState, cgroups: Set<String>, classesOnly: Set<String> = [],
        onlyClasses: [String: Set<TCHandle>] = [:]
    ) -> ObservedState {
        // What the read-back observed wins (all of the machine-wide state: the record, the
        // sock_create map, accounts); what it left out on purpose comes from the plan.
        var o = fresh
        for (name, seen) in before.namespaces {
            guard let new = fresh.namespaces[name] else {
                o.namespaces[name] = seen
                continue
            }
            if classesOnly.contains(name), new.problem == nil {
                var kept = seen
                if let ids = onlyClasses[name] {
                    var read = Dictionary(new.classes.map { ($0.spec.classid, $0) }, uniquingKeysWith: { a, _ in a })
                    kept.classes = seen.classes.compactMap { c in
                        ids.contains(c.spec.classid) ? read.removeValue(forKey: c.spec.classid) : c
                    }
                    kept.classes += new.classes.filter { read[$0.spec.classid] != nil }
                } else {
                    kept.classes = new.classes
                }
                o.namespaces[name] = kept
            }
        }
        o.provision = before.provision.merging(fresh.provision) { _, new in new }
        o.resolved = before.resolved.merging(fresh.resolved) { _, new in new }
        o.notes = before.notes + fresh.notes.filter { !before.notes.contains($0) }
        o.cgroups = before.cgroups
        for path in cgroups {
            o.cgroups[path] = fresh.cgroups[path]
            guard let slash = path.lastIndex(of: "/") else { continue }
            let parent = String(path[..<slash])
            let name = String(path[path.index(after: slash)...])
            o.cgroups[parent]?.children.removeAll { $0 == name }
            if fresh.cgroups[path] != nil { o.cgroups[parent]?.children.append(name) }
        }
        return o
    }

    /// The policy as planned: without the namespaces a `skipUnreachable` plan left out.
    func verifyPolicy(_ policy: Policy, _ plan: PlanResult) -> Policy {
        var p = policy
        p.namespaces.removeAll { plan.skipped[$0.name] != nil }
        return p
    }

    /// Performs `ops` in order, appending each to `done`. Returns the operation that failed and why,
    /// leaving the rollback to the caller.
    func perform(
        _ ops: [Operation], in observed: ObservedState, _ done: inout [Operation], _ report: inout ApplyReport
    ) -> (Operation, any Error)? {
        // The kernel port may send many at once (a batch's later operations can have succeeded after
        // an earlier one failed: they are done all the same, so rollback undoes them too).
        // Each carries where it acts, from the observation it was planned from.
        var rest = ops.map { $0.resolved(in: observed) }[...]
        while !rest.isEmpty {
            let results = kernel.execute(Array(rest))
            var failure: (Operation, any Error)?
            for (op, result) in zip(rest, results) {
                switch Self.outcome(result, of: op) {
                case .done:
                    done.append(op)
                    logger.info("\(op.command)", metadata: ["namespace": "\(op.namespace)"])
                case .vanished(let pid): if let pid { report.vanished.append(pid) }
                case .failed(let error): if failure == nil { failure = (op, error) }
                }
            }
            if let failure { return failure }
            // A port that answers nothing must not end the loop as if every operation were done.
            if results.isEmpty, let next = rest.first { return (next, PortAnsweredNothing(pending: rest.count)) }
            rest = rest.dropFirst(results.count)
        }
        return nil
    }

    /// The kernel port returned no result for a non-empty batch (a port bug, not the kernel's).
    struct PortAnsweredNothing: Error, CustomStringConvertible {
        let pending: Int
        var description: String { "the kernel port returned no result for \(pending) operation(s)" }
    }

    /// What became of one operation.
    enum Outcome {
        case done
        /// A membership move whose process exited between the /proc scan and the move: nothing to
        /// classify (nor to undo); the pid when the operation moved one.
        case vanished(Int32?)
        case failed(any Error)
    }

    /// The one place an operation meets the kernel, for apply, rollback and reset alike.
    func execute(_ op: Operation) -> Outcome {
        Self.outcome(Result { try kernel.execute(op) }, of: op)
    }

    /// What the kernel's answer to `op` means (`execute`, and each result of a batch).
    /// (The inverse of a membership move is a membership move, so a rollback needs no other rule.)
    static func outcome(_ result: Result<Void, any Error>, of op: Operation) -> Outcome {
        switch result {
        case .success: return .done
        case .failure(let e as KernelFailure) where op.isMembership && e.errno == KernelErrno.ESRCH:
            if case .moveProcess(let pid, _, _, _) = op.action { return .vanished(pid) }
            return .vanished(nil)
        case .failure(let error): return .failed(error)
        }
    }

    /// After an apply (or a plan with nothing to do): every entry of the policy that is on the machine
    /// has a record that stands on its own (policy, target, device), names the cgroups of its classes,
    /// has the real namespace id and ifindex of trees recorded before their device existed, and owns a
    /// tree with netshape's handle and filter that it found without a record (adopted).
    @discardableResult
    func keepRecord(
        _ start: OwnershipRecord, _ observed: ObservedState, _ desired: DesiredState, _ policy: Policy,
        _ policyPath: String
    ) throws -> OwnershipRecord {
        var record = start
        for ns in desired.namespaces {
            guard let seen = observed.namespaces[ns.name], seen.problem == nil else { continue }
            var e = record.namespaces[ns.name] ?? OwnershipRecord.newEntry(ns.name, policy, policyPath)
            guard e.policy == policyPath else { continue }
            e.target = ns.target
            e.device = policy.namespace(ns.name)?.device
            var recorded = Set(e.cgroups ?? [])
            for path in [CgroupPaths.namespace(ns.name)] + ns.cgroups.map(\.relativePath)
            where e.cgroups != nil && observed.cgroups[path] != nil && recorded.insert(path).inserted {
                e.cgroups?.append(path)
            }
            if let t = e.egress, t.ifindex == 0 || t.netnsID.isEmpty, t.device == seen.device {
                e.egress?.ifindex = seen.ifindex
                e.egress?.netnsID = seen.netnsID
            }
            if ns.filter.kind == .cgroup2, seen.cgroup2Map != nil {
                e.cgroup2Classifier = Cgroup2Entry.objectName(namespace: ns.name)
            } else if ns.filter.kind != .cgroup2, e.cgroup2Classifier != nil,
                !seen.filters.contains(where: { $0.bpfName == FilterSpec.cgroup2ProgramName })
            {
                e.cgroup2Classifier = nil
            }
            if e.egress == nil, let root = seen.configuredRoot, Differ.adoptable(root, ns, seen) {
                e.egress = OwnershipRecord.Tree(
                    netnsID: seen.netnsID, device: seen.device, ifindex: seen.ifindex, handle: root.handle,
                    classes: seen.classes.map(\.spec.classid).filter { $0.major == root.handle.major })
            }
            if let t = e.ingress?.tree, let ing = seen.ingress, t.ifindex == 0 || t.netnsID.isEmpty,
                t.device == ing.device
            {
                e.ingress?.tree?.ifindex = ing.ifindex
                e.ingress?.tree?.netnsID = ing.netnsID
            }
            if let map = observed.sockCreate {
                // The cookie whose rules are in the map: the namespace's now, else one left from before.
                let cookies = Set(map.entries.keys.map(\.cookie))
                e.sockCookie =
                    cookies.contains(seen.netnsCookie)
                    ? seen.netnsCookie : e.sockCookie.flatMap { cookies.contains($0) ? $0 : nil }
            }
            record.namespaces[ns.name] = e
        }
        if let map = observed.sockCreate, !map.attached { record.sockCreate = nil }
        if record != observed.ownership { try kernel.saveOwnership(record) }
        return record
    }

    func rollback(_ done: [Operation]) -> (undone: [Operation], failures: [(Operation, any Error)]) {
        var undone: [Operation] = []
        var failures: [(Operation, any Error)] = []
        for op in done.reversed() {
            let inverse = op.inverse
            switch execute(inverse) {
            case .done:
                undone.append(op)
                logger.notice("rolled back: \(inverse.command)")
            case .vanished: undone.append(op)
            case .failed(let error): failures.append((inverse, error))
            }
        }
        return (undone, failures)
    }

    /// A matcher for `policy`'s rules with its regular expressions compiled once.
    public static func matcher(_ policy: Policy, _ observed: ObservedState) -> ProcessMatcher {
        let patterns = Set(policy.namespaces.flatMap { $0.classes.flatMap(\.match.cmdline) })
        let compiled = RegexCache(patterns)
        return ProcessMatcher(users: observed.users, groups: observed.groups) { pattern, text in
            compiled.matches(pattern, text)
        }
    }
}

/// Compiled `match.cmdline` expressions. Regex values are immutable once built; the cache is
/// only read after init, so sharing it across threads is safe.
final class RegexCache: @unchecked Sendable {
    let regexes: [String: Regex<AnyRegexOutput>]
    init(_ patterns: Set<String>) {
        var r: [String: Regex<AnyRegexOutput>] = [:]
        for p in patterns { r[p] = try? Regex(p) }
        regexes = r
    }
    func matches(_ pattern: String, _ text: String) -> Bool {
        guard let re = regexes[pattern] else { return false }
        return (try? re.firstMatch(in: text)) != nil
    }
}
