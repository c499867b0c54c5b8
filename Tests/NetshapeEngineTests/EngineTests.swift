import NetshapeCore
import NetshapePolicy
import NetshapeTestSupport
import Testing

@testable import NetshapeEngine

let webPolicy = SamplePolicy.web

func load(_ text: String) throws -> Policy { try PolicyParser.parse(text, file: "t.toml") }

/// A fake machine with namespace "web" (device eth0) and a few processes.
func machine(_ caps: KernelCapabilities = .minimal) -> FakeKernel {
    let k = FakeKernel(capabilities: caps)
    k.users = ["backup": 34]
    k.addNamespace(
        "web",
        processes: [
            ProcessInfo(pid: 100, comm: "nginx", exe: "/usr/sbin/nginx", uid: 33),
            ProcessInfo(pid: 101, comm: "rsync", exe: "/usr/bin/rsync", uid: 34),
            ProcessInfo(pid: 102, comm: "bash", exe: "/bin/bash"),
        ])
    return k
}

/// Everything the fake kernel holds, for before/after comparisons.
struct Snapshot: Equatable {
    var namespaces: [String: String]
    var cgroups: [String: ObservedCgroup]
    var ownership: OwnershipRecord
    init(_ k: FakeKernel) {
        namespaces = k.namespaces.mapValues { "\($0.qdiscs)|\($0.classes)|\($0.filters)" }
        cgroups = k.cgroups
        ownership = k.ownership
    }
}

@Suite struct EngineTests {
    @Test func applyBuildsTheTreeAndASecondApplyChangesNothing() throws {
        let k = machine()
        let engine = Engine(kernel: k)
        let p = try load(webPolicy)
        let first = try engine.apply(p, policyPath: "/etc/netshape/web.toml")
        #expect(first.remaining.isEmpty, "verification passes")
        let ns = try #require(k.namespaces["web"])
        #expect(ns.classes.count == 4)
        #expect(ns.qdiscs.filter { $0.kind == "bfifo" }.count == 3)
        #expect(ns.filters.map(\.kind) == ["bpf"])
        #expect(k.cgroups["netshape/web/frontend"]?.pids == [100])
        #expect(k.cgroups["netshape/web/backup"]?.pids == [101])
        #expect(k.cgroups["netshape/web/other"]?.pids == [], "unmatched processes are left alone")
        #expect(k.ownership.namespaces["web"]?.policy == "/etc/netshape/web.toml")

        k.clearLog()
        let second = try engine.apply(p, policyPath: "/etc/netshape/web.toml")
        #expect(second.performed.isEmpty)
        #expect(k.log.isEmpty, "nothing deleted or re-created")
    }

    @Test func aRateEditIsOneChangeInPlace() throws {
        let k = machine()
        let engine = Engine(kernel: k)
        try engine.apply(try load(webPolicy), policyPath: "/p")
        let classidBefore = k.cgroups["netshape/web/frontend"]?.classid
        k.clearLog()
        let edited = try load(webPolicy.replacingOccurrences(of: "\"60mbit\"", with: "\"70mbit\""))
        let report = try engine.apply(edited, policyPath: "/p")
        #expect(report.performed.count == 1)
        guard case .changeClass(let new, let old)? = report.performed.first?.action else {
            Issue.record("expected a class change, got \(report.performed)")
            return
        }
        #expect(new.rate == .mbit(70))
        #expect(old.rate == .mbit(60))
        #expect(new.classid == classidBefore)
    }

    @Test func aNewClassKeepsEveryOtherClassid() throws {
        let k = machine()
        let engine = Engine(kernel: k)
        try engine.apply(try load(webPolicy), policyPath: "/p")
        let before = k.cgroups.mapValues(\.classid)
        let more = webPolicy.replacingOccurrences(
            of: "[[namespace.class]]\nname = \"frontend\"",
            with: "[[namespace.class]]\nname = \"api\"\nrate = \"5mbit\"\n\n[[namespace.class]]\nname = \"frontend\"")
        k.clearLog()
        let report = try engine.apply(try load(more), policyPath: "/p")
        for (path, id) in before { #expect(k.cgroups[path]?.classid == id, "\(path)") }
        #expect(report.performed.map(\.verb) == ["add", "add", "create"], "class, leaf, cgroup")
    }

    @Test func aRemovedClassIsRemovedAndItsMembersReleased() throws {
        let k = machine()
        let engine = Engine(kernel: k)
        try engine.apply(try load(webPolicy), policyPath: "/p")
        let fewer = webPolicy.replacingOccurrences(
            of:
                "[[namespace.class]]\nname = \"backup\"\nrate = \"5mbit\"\nceil = \"20mbit\"\nmatch.user = [\"backup\"]\n",
            with: "")
        let report = try engine.apply(try load(fewer), policyPath: "/p")
        #expect(k.cgroups["netshape/web/backup"] == nil)
        #expect(k.namespaces["web"]?.classes.count == 3)
        #expect(report.performed.contains { if case .moveProcess(101, _, _, "") = $0.action { true } else { false } })
    }

    @Test func changingTheDefaultClassNeverRebuildsTheTree() throws {
        let k = machine()
        let engine = Engine(kernel: k)
        try engine.apply(try load(webPolicy), policyPath: "/p")
        let report = try engine.apply(
            try load(webPolicy.replacingOccurrences(of: "default = \"other\"", with: "default = \"backup\"")),
            policyPath: "/p")
        #expect(report.remaining.isEmpty)
        #expect(
            !report.performed.contains { op in
                switch op.action {
                case .addRootQdisc, .deleteRootQdisc, .replaceRootQdisc: return true
                default: return false
                }
            }, "HTB cannot change its default class in place, so netshape never has to")
        #expect(k.cgroups["netshape/web/backup"]?.classid.minor == Planner.defaultMinor)
        #expect(k.cgroups["netshape/web/other"]?.classid.minor != Planner.defaultMinor)
    }

    @Test func aForeignRootQdiscIsRefusedUnlessForced() throws {
        let k = machine()
        k.namespaces["web"]?.qdiscs = [ObservedQdisc(handle: TCHandle(major: 1, minor: 0), parent: .root, kind: "tbf")]
        let engine = Engine(kernel: k)
        let before = Snapshot(k)
        #expect(throws: DiffError.self) { try engine.apply(try load(webPolicy), policyPath: "/p") }
        #expect(Snapshot(k) == before, "a refused apply changes nothing")
        let report = try engine.apply(try load(webPolicy), policyPath: "/p", options: ApplyOptions(force: true))
        #expect(report.performed.first?.verb == "replace")
        #expect(k.namespaces["web"]?.qdiscs.first { $0.parent == .root }?.kind == "htb")
    }

    @Test(arguments: [3, 9, 13, 15])
    func aFailureHalfWayRollsEverythingBack(failAt: Int) throws {
        let k = machine()
        let engine = Engine(kernel: k)
        let before = Snapshot(k)
        var count = 0
        k.failWhen = { _ in
            count += 1
            return count == failAt ? FakeKernelError(errno: 22, "injected EINVAL") : nil
        }
        do {
            try engine.apply(try load(webPolicy), policyPath: "/p")
            Issue.record("expected the injected failure")
        } catch let e as ApplyError {
            #expect(e.rollbackFailures.isEmpty)
            #expect(e.rolledBack.count == failAt - 1)
            #expect(e.description.contains("injected EINVAL"))
        }
        #expect(Snapshot(k) == before, "the machine is as it was")
    }

    @Test func anApplyErrorNamesTheFailedCommandOnce() {
        let op = Operation(
            namespace: "web", device: "eth0",
            action: .removeCgroup(path: "netshape/web/bulk", classid: TCHandle(major: 1, minor: 3)))
        let named = FakeKernelError(errno: 5, "\(op.command): injected failure")
        let bare = FakeKernelError(errno: 5, "injected failure")
        let once = ApplyError(failed: op, underlying: named, rolledBack: [], rollbackFailures: [(op, named)])
        #expect(
            once.description == "\(op.command): injected failure; rollback failed for: \(op.command): injected failure")
        let prefixed = ApplyError(failed: op, underlying: bare, rolledBack: [], rollbackFailures: [])
        #expect(prefixed.description == "\(op.command): injected failure (nothing had changed)")
    }

    @Test func operationsABatchCarriedOutAfterItsFailureAreRolledBackToo() throws {
        let k = machine()
        k.batchSize = 4
        let engine = Engine(kernel: k)
        let before = Snapshot(k)
        var count = 0
        // The 3rd operation fails; the kernel carries on with the 4th of the same batch.
        k.failWhen = { _ in
            count += 1
            return count == 3 ? FakeKernelError(errno: 22, "injected EINVAL") : nil
        }
        do {
            try engine.apply(try load(webPolicy), policyPath: "/p")
            Issue.record("expected the injected failure")
        } catch let e as ApplyError {
            #expect(e.rollbackFailures.isEmpty)
            #expect(e.rolledBack.count == 3, "operations 1, 2 and 4 were done, so all three are undone")
            #expect(e.description.contains("injected EINVAL"))
        }
        #expect(Snapshot(k) == before, "the machine is as it was")
    }

    @Test func aPortThatAnswersNothingFailsTheApplyInsteadOfEndingItAsDone() throws {
        let k = machine()
        k.batchSize = 0
        let before = Snapshot(k)
        do {
            try Engine(kernel: k).apply(try load(webPolicy), policyPath: "/p")
            Issue.record("an apply whose operations got no answer reported success")
        } catch let e as ApplyError {
            #expect(e.description.contains("returned no result"), "\(e)")
            #expect(e.rolledBack.isEmpty)
        }
        #expect(Snapshot(k) == before, "nothing was done")
    }

    @Test func aFailedEditRestoresThePreviousWorkingState() throws {
        let k = machine()
        let engine = Engine(kernel: k)
        try engine.apply(try load(webPolicy), policyPath: "/p")
        let working = Snapshot(k)
        k.failWhen = { op in op.object == "cgroup" ? FakeKernelError(errno: 28, "injected ENOSPC") : nil }
        let edited =
            webPolicy.replacingOccurrences(of: "\"60mbit\"", with: "\"50mbit\"")
            + "\n[[namespace.class]]\nname = \"new\"\nrate = \"1mbit\"\n"
        #expect(throws: ApplyError.self) { try engine.apply(try load(edited), policyPath: "/p") }
        #expect(Snapshot(k) == working)
    }

    @Test func resetRemovesExactlyWhatApplyCreated() throws {
        let k = machine()
        let engine = Engine(kernel: k)
        let pristine = Snapshot(k)
        try engine.apply(try load(webPolicy), policyPath: "/p")
        let report = try engine.reset(policyPath: "/p", policy: try load(webPolicy))
        #expect(!report.performed.isEmpty)
        var after = Snapshot(k)
        // The shared netshape/ directory stays (other policies may use it); nothing of "web" does.
        #expect(after.cgroups.keys.sorted() == ["netshape"])
        after.cgroups = [:]
        #expect(after == pristine)
        #expect(
            try engine.reset(policyPath: "/p", policy: try load(webPolicy)).performed.isEmpty,
            "a second reset has nothing to do")
    }

    @Test func processesThatExitMidApplyAreNotFailures() throws {
        let k = machine()
        let engine = Engine(kernel: k)
        k.failWhen = { op in
            if case .moveProcess(100, _, _, _) = op.action { return FakeKernelError(errno: 3, "ESRCH") }
            return nil
        }
        let report = try engine.apply(try load(webPolicy), policyPath: "/p")
        #expect(report.vanished == [100])
    }

    @Test func cgroupKernelsGetClsCgroupAndFqCodel() throws {
        let k = machine(.stock)
        try Engine(kernel: k).apply(try load(webPolicy), policyPath: "/p")
        #expect(k.namespaces["web"]?.filters.map(\.kind) == ["cgroup"])
        #expect(k.namespaces["web"]?.qdiscs.filter { $0.kind == "fq_codel" }.count == 3)
    }

    @Test func switchingClassifierReplacesOnlyTheFilter() throws {
        let k = machine(.stock)
        let engine = Engine(kernel: k)
        try engine.apply(try load(webPolicy), policyPath: "/p")
        k.clearLog()
        let bpf =
            "version = 1\n[settings]\nclassifier = \"bpf\"\n"
            + webPolicy.replacingOccurrences(of: "version = 1\n", with: "")
        let report = try engine.apply(try load(bpf), policyPath: "/p")
        #expect(report.performed.map { "\($0.verb) \($0.object)" } == ["delete filter", "add filter"])
    }

    @Test func aMissingNamespaceIsReportedAndNothingChanges() throws {
        let k = FakeKernel()
        let before = Snapshot(k)
        #expect(throws: DiffError.self) { try Engine(kernel: k).apply(try load(webPolicy), policyPath: "/p") }
        #expect(Snapshot(k) == before)
    }

    @Test func statusReportsCountersThroughputAndMembers() throws {
        let k = machine()
        let engine = Engine(kernel: k)
        let p = try load(webPolicy)
        try engine.apply(p, policyPath: "/p")
        let frontend = try #require(k.cgroups["netshape/web/frontend"]?.classid)
        let report = try engine.status(p, interval: 2) { _ in
            k.count(namespace: "web", classid: frontend, bytes: 2_500_000, packets: 1000)
        }
        let ns = try #require(report.namespaces.first)
        #expect(ns.applied)
        #expect(ns.classifier == "bpf")
        let c = try #require(ns.classes.first { $0.name == "frontend" })
        #expect(c.rate == 60_000_000)
        #expect(c.ceil == 100_000_000)
        #expect(c.bytes == 2_500_000)
        #expect(c.throughput == 10_000_000)
        #expect(c.pids == [100])
    }
}

extension String {
    func replacingOccurrences(of target: String, with replacement: String) -> String {
        var out = ""
        var rest = self[...]
        while let r = rest.firstRange(of: target) {
            out += rest[..<r.lowerBound] + replacement
            rest = rest[r.upperBound...]
        }
        return out + rest
    }
}
