import NetshapeCore
import NetshapeEngine
import NetshapePolicy
import NetshapeTestSupport
import Testing

/// Identity, records that stand on their own, and foreign objects (issue "Every edit converges").
@Suite struct OwnershipTests {
    @Test func aSecondPolicyClaimingTheSameNameIsRefusedBeforeAnythingChanges() throws {
        let k = machine()
        let engine = Engine(kernel: k)
        _ = try engine.apply(try load(webPolicy), policyPath: "/etc/netshape/one.toml")
        let before = Snapshot(k)
        k.clearLog()
        let error = #expect(throws: DiffError.self) {
            try engine.apply(try load(webPolicy), policyPath: "/etc/netshape/two.toml")
        }
        #expect(error?.code == .claimed)
        #expect(error?.message.contains("/etc/netshape/one.toml") == true, "names the other policy")
        #expect(k.log.isEmpty)
        #expect(Snapshot(k) == before)
    }

    @Test func anotherEntryOnTheSameDeviceIsRefusedEvenWithForce() throws {
        let k = machine()
        let engine = Engine(kernel: k)
        _ = try engine.apply(try load(webPolicy), policyPath: "/a.toml")
        // The fake resolves targets by entry name: give "web2" the very same namespace.
        k.namespaces["web2"] = k.namespaces["web"]
        let other = webPolicy.replacingOccurrences(of: "name = \"web\"", with: "name = \"web2\"")
        for force in [false, true] {
            let error = #expect(throws: DiffError.self) {
                try engine.apply(try load(other), policyPath: "/b.toml", options: ApplyOptions(force: force))
            }
            #expect(error?.code == .claimed)
            #expect(error?.message.contains("namespace web of /a.toml") == true, "\(error?.message ?? "")")
        }
    }

    @Test func twoEntriesOfOnePolicyOnOneDeviceAreRefused() throws {
        let k = machine()
        k.namespaces["web2"] = k.namespaces["web"]
        let text =
            webPolicy + "\n[[namespace]]\nname = \"web2\"\ndevice = \"eth0\"\negress = \"10mbit\"\n"
        let error = #expect(throws: DiffError.self) { try Engine(kernel: k).plan(try load(text), policyPath: "/p") }
        #expect(error?.code == .duplicateTarget)
        #expect(k.log.isEmpty)
    }

    @Test func resetWorksFromTheRecordAloneAndResetAllRemovesEveryPolicy() throws {
        let k = machine()
        k.addNamespace("db")
        let engine = Engine(kernel: k)
        let pristine = Snapshot(k)
        _ = try engine.apply(try load(webPolicy), policyPath: "/gone.toml")
        let db = "version = 1\n[[namespace]]\nname = \"db\"\ndevice = \"eth0\"\negress = \"50mbit\"\n"
        _ = try engine.apply(try load(db), policyPath: "cni:1234")
        // The policy file is gone: reset by its path, with no policy at hand.
        let r = try engine.reset(policyPath: "/gone.toml", policy: nil)
        #expect(r.performed.contains { if case .deleteRootQdisc = $0.action { return true } else { return false } })
        #expect(k.ownership.namespaces["web"] == nil)
        #expect(k.ownership.namespaces["db"] != nil, "another policy's entry is untouched")
        _ = try engine.resetAll()
        var after = Snapshot(k)
        after.cgroups["netshape"] = nil
        #expect(after == pristine)
        #expect(try engine.resetAll().performed.isEmpty)
    }

    @Test func aTreeWhoseRecordWasLostIsAdoptedByApplyAndRemovedByReset() throws {
        let k = machine()
        let engine = Engine(kernel: k)
        let pristine = Snapshot(k)
        _ = try engine.apply(try load(webPolicy), policyPath: "/p")
        k.ownership = OwnershipRecord()
        let again = try engine.apply(try load(webPolicy), policyPath: "/p")
        #expect(again.performed.isEmpty, "adopted, not rebuilt: \(again.performed.map(\.command))")
        #expect(k.ownership.namespaces["web"]?.egress != nil)
        k.ownership = OwnershipRecord()
        _ = try engine.reset(policyPath: "/p", policy: try load(webPolicy))
        var after = Snapshot(k)
        after.cgroups["netshape"] = nil
        #expect(after == pristine)
    }

    @Test func foreignCgroupsClassesAndFiltersAreLeftAloneAndNamed() throws {
        let k = machine()
        let engine = Engine(kernel: k)
        _ = try engine.apply(try load(webPolicy), policyPath: "/p")
        // Someone else's cgroup beside netshape's, one inside a class cgroup, and a class in the tree.
        k.cgroups["netshape/web/mine"] = ObservedCgroup(path: "netshape/web/mine", classid: .unspecified, pids: [102])
        k.cgroups["netshape/web/frontend/nested"] = ObservedCgroup(
            path: "netshape/web/frontend/nested", classid: .unspecified)
        let major = try #require(k.namespaces["web"]?.qdiscs.first { $0.parent == .root }?.handle.major)
        let foreign = HTBClassSpec(
            classid: TCHandle(major: major, minor: 0x99), parent: TCHandle(major: major, minor: 1), rate: .mbit(1),
            ceil: .mbit(1), burst: Size(bytes: 2000), cburst: Size(bytes: 2000), priority: 0, quantum: 1514)
        k.namespaces["web"]?.classes.append(ObservedClass(spec: foreign))
        k.clearLog()
        let report = try engine.apply(try load(webPolicy), policyPath: "/p")
        #expect(report.performed.isEmpty, "\(report.performed.map(\.command))")
        #expect(report.notes.contains { $0.contains("netshape/web/mine") })
        #expect(report.notes.contains { $0.contains("\(foreign.classid)") })
        #expect(k.cgroups["netshape/web/mine"]?.pids == [102])
        // reset removes everything else, names what it had to leave, and says so with an error.
        let error = #expect(throws: ResetError.self) { try engine.reset(policyPath: "/p", policy: nil) }
        #expect(error?.report.foreign.contains { $0.contains("netshape/web/mine") } == true)
        #expect(error?.blocked.contains { $0.contains("netshape/web/frontend") } == true)
        #expect(k.cgroups["netshape/web/mine"] != nil)
        #expect(k.cgroups["netshape/web/backup"] == nil)
        // Deleting the root would take the foreign class with it: the tree stays, named.
        #expect(error?.blocked.contains { $0.contains("HTB tree") && $0.contains("\(foreign.classid)") } == true)
        #expect(k.namespaces["web"]?.classes.contains { $0.spec.classid == foreign.classid } == true)
        // Once the foreign objects are gone, a second reset finishes the job.
        k.cgroups["netshape/web/mine"] = nil
        k.cgroups["netshape/web/frontend/nested"] = nil
        k.namespaces["web"]?.classes.removeAll { $0.spec.classid == foreign.classid }
        _ = try engine.reset(policyPath: "/p", policy: nil)
        #expect(k.cgroups.keys.sorted() == ["netshape"])
        #expect(k.namespaces["web"]?.qdiscs.first?.kind == "noqueue", "the tree went")
        #expect(k.ownership.namespaces.isEmpty)
    }

    @Test func changingTheEgressConvergesOnAnInnerRootClass() throws {
        let k = machine()
        let engine = Engine(kernel: k)
        _ = try engine.apply(try load(webPolicy), policyPath: "/p")
        let edited = webPolicy.replacingOccurrences(of: "egress = \"100mbit\"", with: "egress = \"200mbit\"")
        let report = try engine.apply(try load(edited), policyPath: "/p")
        #expect(report.remaining.isEmpty)
        #expect(try engine.plan(try load(edited), policyPath: "/p").operations.isEmpty)
    }

    @Test func statusFromTheRecordMarksOrphans() throws {
        let k = machine()
        let engine = Engine(kernel: k)
        _ = try engine.apply(try load(webPolicy), policyPath: "/gone.toml")
        let s = try engine.recordStatus(names: ["web"], orphaned: "its policy /gone.toml is missing")
        #expect(s.count == 1)
        #expect(s[0].applied)
        #expect(s[0].orphaned?.contains("netshape reset /gone.toml") == true)
        #expect(Set(s[0].classes.map(\.name)) == ["frontend", "backup", "other"])
        // A class someone else hung in the tree is not shown as netshape's, and the default stays the default.
        let major = try #require(k.namespaces["web"]?.qdiscs.first { $0.parent == .root }?.handle.major)
        let foreign = HTBClassSpec(
            classid: TCHandle(major: major, minor: 0x7777), parent: TCHandle(major: major, minor: 1), rate: .mbit(1),
            ceil: .mbit(1), burst: Size(bytes: 2000), cburst: Size(bytes: 2000), priority: 0, quantum: 1514)
        k.namespaces["web"]?.classes.append(ObservedClass(spec: foreign))
        let withForeign = try engine.recordStatus(names: ["web"], orphaned: "gone")
        #expect(!withForeign[0].classes.contains { $0.classid == "\(foreign.classid)" })
        #expect(withForeign[0].classes.filter(\.isDefault).map(\.name) == ["other"])
        k.namespaces["web"] = nil
        let gone = try engine.recordStatus(names: ["web"], orphaned: nil)
        #expect(gone[0].orphaned?.contains("namespace is gone") == true)
    }
}
