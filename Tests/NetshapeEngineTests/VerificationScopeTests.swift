import NetshapeCore
import NetshapeEngine
import NetshapePolicy
import NetshapeTestSupport
import Testing

/// The verification after an apply reads back only what the operations touched. These tests hold
/// it to what that must not cost: a change the kernel acknowledged but did not make is still
/// reported, and a change made behind netshape's back anywhere else is found by the next plan.
@Suite struct VerificationScopeTests {
    /// One way the machine can drift from what netshape made, picked at random on the fake kernel.
    /// Returns what it did, or nil when the machine has nothing of that kind.
    static func diverge(_ k: FakeKernel, _ r: inout SeededRandom) -> String? {
        let names = k.namespaces.keys.sorted()
        guard let ns = names.randomElement(using: &r) else { return nil }
        switch Int.random(in: 0..<4, using: &r) {
        case 0:
            let classes = k.namespaces[ns]?.classes ?? []
            guard let i = classes.indices.randomElement(using: &r) else { return nil }
            k.namespaces[ns]?.classes[i].spec.rate = Rate(bytesPerSecond: classes[i].spec.rate.bytesPerSecond + 125)
            return "\(ns): rate of class \(classes[i].spec.classid) changed"
        case 1:
            // (A changed classid is not drift: netshape takes a class's classid from its cgroup.)
            let paths = k.cgroups.filter { $0.key.split(separator: "/").count == 3 && $0.value.pids.isEmpty }.keys
            guard let p = paths.sorted().randomElement(using: &r) else { return nil }
            k.cgroups[p] = nil
            return "cgroup \(p) removed"
        case 2:
            let leaves = (k.namespaces[ns]?.qdiscs ?? []).filter { $0.parent != .root && $0.parent != .ingress }
            guard let leaf = leaves.randomElement(using: &r) else { return nil }
            k.namespaces[ns]?.qdiscs.removeAll { $0 == leaf }
            return "\(ns): leaf under \(leaf.parent) removed"
        default:
            guard !(k.namespaces[ns]?.filters.isEmpty ?? true) else { return nil }
            k.namespaces[ns]?.filters = []
            return "\(ns): filters removed"
        }
    }

    /// For random edits A → B: while B is being applied (after its plan observed the machine), the
    /// machine drifts somewhere. Then the apply reports it unconverged, or the next plan has work to
    /// do, or the drift was overwritten by the apply itself (the machine equals a clean apply's).
    /// After one more apply the machine equals the clean one.
    @Test func aDivergenceOutsideWhatAnApplyTouchedIsCaughtByTheNextPlan() throws {
        var checked = 0
        var foundByNextPlan = 0
        for seed in UInt64(1)...400 {
            var r = SeededRandom(seed: seed &* 104_729)
            let caps = walkCapabilities(seed: seed, every: 2)
            var a = ModelPolicy(
                leaf: nil, classifier: nil,
                namespaces: [
                    ModelPolicy.randomNamespace(&r, caps, name: "a"), ModelPolicy.randomNamespace(&r, caps, name: "b"),
                ])
            a.normalize()
            var b = a
            let edit = b.edit(&r, caps)
            let policyA = try PolicyParser.parse(a.toml, file: "a")
            let policyB = try PolicyParser.parse(b.toml, file: "b")

            let clean = walkMachine(caps)
            try quietEngine(clean).apply(policyA, policyPath: "/p")
            try quietEngine(clean).apply(policyB, policyPath: "/p")
            let want = ConfigSnapshot(clean)

            let k = walkMachine(caps)
            let engine = quietEngine(k)
            try engine.apply(policyA, policyPath: "/p")
            var drift: String?
            var first = true
            k.failWhen = { _ in
                if first { drift = Self.diverge(k, &r) }
                first = false
                return nil
            }
            // A drift into an object the apply then changes can make it fail (and roll back): caught too.
            let report = try? engine.apply(policyB, policyPath: "/p")
            k.failWhen = nil
            guard let drift else { continue }
            let context: Comment = "seed \(seed), edit \(edit), drift: \(drift)\nB:\n\(b.toml)"
            let next = try engine.plan(policyB, policyPath: "/p")
            let caught =
                report.map { !$0.remaining.isEmpty } ?? true || !next.operations.isEmpty || ConfigSnapshot(k) == want
            #expect(caught, "a drift went unseen by the apply and by the next plan. \(context)")
            if report?.remaining.isEmpty == true && !next.operations.isEmpty { foundByNextPlan += 1 }
            let again = try engine.apply(policyB, policyPath: "/p")
            #expect(again.remaining.isEmpty, context)
            #expect(try engine.plan(policyB, policyPath: "/p").operations.isEmpty, context)
            let got = ConfigSnapshot(k)
            // The machine, not the record: a drift that removes an object the apply was about to
            // remove fails that apply, and the restored record then still names the vanished object
            // (harmless, `reset` skips what is gone; an existing limitation, not the read-back's).
            let same = got.devices == want.devices && got.cgroups == want.cgroups
            #expect(same, "differs from a clean apply: \(Self.difference(got, want))")
            checked += 1
        }
        #expect(checked > 200, "drift injected in \(checked) applies")
        // The scoped verification does leave some drift to the next plan: the case is exercised.
        #expect(foundByNextPlan > 20, "\(foundByNextPlan) drifts were left to the next plan")
    }

    static func difference(_ a: ConfigSnapshot, _ b: ConfigSnapshot) -> String {
        var out: [String] = []
        for key in Set(a.devices.keys).union(b.devices.keys).sorted() where a.devices[key] != b.devices[key] {
            out.append("\(key): \(a.devices[key] ?? []) vs \(b.devices[key] ?? [])")
        }
        if a.cgroups != b.cgroups { out.append("cgroups \(a.cgroups) vs \(b.cgroups)") }
        return out.joined(separator: "\n")
    }

    static let policy = """
        version = 1
        [[namespace]]
        name = "a"
        device = "eth0"
        egress = "100mbit"
        [[namespace.class]]
        name = "web"
        rate = "60mbit"
        [[namespace.class]]
        name = "bulk"
        rate = "10mbit"
        [[namespace]]
        name = "b"
        device = "eth0"
        egress = "50mbit"
        [[namespace.class]]
        name = "db"
        rate = "20mbit"
        """

    /// A kernel that acknowledges a change and then does not have it: the read-back reports it.
    @Test func anAcknowledgedChangeThatDidNotTakeIsReported() throws {
        let k = walkMachine(.minimal)
        let engine = quietEngine(k)
        try engine.apply(try PolicyParser.parse(Self.policy, file: "p"), policyPath: "/p")
        let edited = try PolicyParser.parse(
            Self.policy.replacingOccurrences(of: "\"60mbit\"", with: "\"70mbit\"")
                + "\n[[namespace.class]]\nname = \"new\"\nrate = \"1mbit\"\n",
            file: "p")
        k.afterEach = { op in
            switch op.action {
            case .changeClass(_, let old):
                if let i = k.namespaces["b"]?.classes.firstIndex(where: { $0.spec.classid == old.classid }) {
                    k.namespaces["b"]?.classes[i].spec = old
                }
            case .createCgroup(let path, _) where path == CgroupPaths.class("new", in: "b"):
                k.cgroups[path] = nil
            default: break
            }
        }
        let report = try engine.apply(edited, policyPath: "/p")
        let remaining = Set(report.remaining.map(\.command))
        #expect(report.remaining.count == 2, "only the two that did not take: \(remaining)")
        #expect(report.remaining.contains { if case .changeClass = $0.action { return true } else { return false } })
        #expect(
            report.remaining.contains {
                if case .createCgroup(CgroupPaths.class("new", in: "b"), _) = $0.action { return true }
                return false
            }, "\(remaining)")
    }

    /// A rate edit reads back only the class it changed: a change that did not take, or a class
    /// that vanished meanwhile, is still reported (and nothing else, the rest being as planned).
    @Test func aChangedClassReadBackAloneShowsWhatDidNotTake() throws {
        for vanish in [false, true] {
            let k = walkMachine(.minimal)
            let engine = quietEngine(k)
            try engine.apply(try PolicyParser.parse(Self.policy, file: "p"), policyPath: "/p")
            let edited = try PolicyParser.parse(
                Self.policy.replacingOccurrences(of: "\"60mbit\"", with: "\"70mbit\""), file: "p")
            // The first class changed does not keep its change (or goes); the others do.
            var hit: TCHandle?
            k.afterEach = { op in
                guard hit == nil, case .changeClass(_, let old) = op.action,
                    let i = k.namespaces[op.namespace]?.classes.firstIndex(where: { $0.spec.classid == old.classid })
                else { return }
                hit = old.classid
                if vanish {
                    k.namespaces[op.namespace]?.classes.remove(at: i)
                } else {
                    k.namespaces[op.namespace]?.classes[i].spec = old
                }
            }
            k.clearLog()
            let report = try engine.apply(edited, policyPath: "/p")
            let changed = report.performed.compactMap { op -> TCHandle? in
                if case .changeClass(let spec, _) = op.action { return spec.classid }
                return nil
            }
            #expect(changed.count == report.performed.count, "\(report.performed.map(\.command))")
            #expect(k.requests.last?.namespaces.map(\.onlyClasses) == [Set(changed)])
            #expect(report.remaining.count == 1, "\(report.remaining.map(\.command))")
            let what = report.remaining.first.map { op -> String in
                switch op.action {
                case .changeClass(let spec, _): return "change \(spec.classid)"
                case .addClass(let spec): return "add \(spec.classid)"
                default: return op.command
                }
            }
            #expect(what == "\(vanish ? "add" : "change") \(hit.map { "\($0)" } ?? "?")", "vanished: \(vanish)")
        }
    }

    /// The read-back asks for the touched namespace and cgroups only; the plan leaves the members
    /// of the cgroups it keeps unread.
    @Test func theReadBackAsksOnlyForWhatWasTouched() throws {
        let k = walkMachine(.minimal)
        let engine = quietEngine(k)
        try engine.apply(try PolicyParser.parse(Self.policy, file: "p"), policyPath: "/p")
        k.clearLog()
        let edited = Self.policy.replacingOccurrences(of: "\"20mbit\"", with: "\"30mbit\"")
        let report = try engine.apply(try PolicyParser.parse(edited, file: "p"), policyPath: "/p")
        #expect(Set(report.performed.map(\.object)) == ["class"], "\(report.performed.map(\.command))")
        #expect(report.remaining.isEmpty)
        #expect(k.requests.count == 2, "one plan, one read-back")
        let plan = try #require(k.requests.first)
        #expect(plan.namespaces.map(\.name) == ["a", "b"])
        #expect(
            plan.cgroupsWithoutMembers.isSuperset(of: [
                CgroupPaths.class("web", in: "a"), CgroupPaths.class("db", in: "b"),
            ]))
        let readBack = try #require(k.requests.last)
        #expect(readBack.namespaces.map(\.name) == ["b"])
        #expect(readBack.namespaces.allSatisfy { $0.classesOnly }, "only classes changed: only classes are read back")
        let changed = report.performed.compactMap { op -> TCHandle? in
            if case .changeClass(let spec, _) = op.action { return spec.classid }
            return nil
        }
        #expect(readBack.namespaces.first?.onlyClasses == Set(changed), "and of them only the changed one")
        #expect(!readBack.cgroups, "no cgroup was touched")

        k.clearLog()
        let renamed = edited.replacingOccurrences(of: "name = \"bulk\"", with: "name = \"batch\"")
        let second = try engine.apply(try PolicyParser.parse(renamed, file: "p"), policyPath: "/p")
        #expect(second.remaining.isEmpty, "\(second.remaining.map(\.command))")
        let back = try #require(k.requests.last)
        #expect(back.namespaces.map(\.name) == ["a"])
        #expect(!back.namespaces.contains { $0.classesOnly }, "a class was added and removed: all is read back")
        #expect(back.cgroups)
        #expect(back.cgroupPaths == [CgroupPaths.class("bulk", in: "a"), CgroupPaths.class("batch", in: "a")])
    }

    /// A cgroup the plan would remove has its members read, so that they are moved out first.
    @Test func aCgroupToRemoveHasItsMembersRead() throws {
        let k = walkMachine(.minimal)
        let engine = quietEngine(k)
        try engine.apply(try PolicyParser.parse(Self.policy, file: "p"), policyPath: "/p")
        k.cgroups[CgroupPaths.class("bulk", in: "a")]?.pids = [101]
        let without = Self.policy.replacingOccurrences(of: "name = \"bulk\"\nrate = \"10mbit\"\n", with: "")
            .replacingOccurrences(of: "[[namespace.class]]\n[[namespace]]", with: "[[namespace]]")
        let report = try engine.apply(try PolicyParser.parse(without, file: "p"), policyPath: "/p")
        #expect(report.remaining.isEmpty)
        #expect(
            report.performed.contains {
                if case .moveProcess(101, _, _, "") = $0.action { return true } else { return false }
            }, "\(report.performed.map(\.command))")
        #expect(k.cgroups[CgroupPaths.class("bulk", in: "a")] == nil)
    }
}
