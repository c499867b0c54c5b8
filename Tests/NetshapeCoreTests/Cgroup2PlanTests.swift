import NetshapeTestSupport
import Testing

@testable import NetshapeCore

/// Which classes go by cgroup v2 path, what the map holds, and what the planner says when it cannot.
@Suite struct Cgroup2PlanTests {
    let classes = [
        ClassPolicy(name: "units", rate: .mbit(10), match: MatchRules(cgroup: ["/system.slice/"])),
        ClassPolicy(name: "backup", rate: .mbit(5), match: MatchRules(cgroup: ["system.slice/backup.service"])),
        ClassPolicy(name: "web", rate: .mbit(5), match: MatchRules(comm: ["nginx"], cgroup: ["system.slice"])),
        ClassPolicy(name: "rest", rate: .mbit(5)),
    ]

    @Test func pathOnlyClassesGoByPathAndTheRestKeepNetCls() throws {
        let d = try Planner.plan(policy(classes, default: "rest"), capabilities: .stock)
        let ns = try #require(d.namespace("web"))
        #expect(ns.classes.map(\.classification) == [.cgroup2, .cgroup2, .netCls, .netCls])
        #expect(ns.filter.kind == .cgroup2 && ns.filter.kind.kind == "bpf")
        // Only net_cls classes get a cgroup; a net_cls class beside them keeps the default's too.
        #expect(ns.cgroups.map(\.className) == ["web", "rest"])
        // The later class's path inside the earlier one's is dropped (first match wins), and named.
        #expect(ns.cgroup2Rules.map(\.path) == ["system.slice"])
        #expect(ns.shadowedCgroup2Paths.map(\.path) == ["system.slice/backup.service"])
        #expect(ns.shadowedCgroup2Paths.first?.takenBy == "units")
        // The net_cls mover never moves a process whose first matching class goes by path.
        let m = ProcessMatcher(users: [:], groups: [:]) { _, _ in false }
        #expect(m.classify(ProcessInfo(pid: 1, comm: "nginx", cgroup: "/system.slice/nginx.service"), in: ns) == nil)
        #expect(m.classify(ProcessInfo(pid: 2, comm: "nginx", cgroup: "/user.slice"), in: ns)?.name == nil)
    }

    @Test func aDefaultBesideOnlyPathClassesNeedsNoNetCls() throws {
        let d = try Planner.plan(policy([classes[0], classes[3]], default: "rest"), capabilities: .stock)
        let ns = try #require(d.namespace("web"))
        #expect(ns.classes.map(\.classification) == [.cgroup2, .unmatched])
        #expect(ns.cgroups.isEmpty)
    }

    @Test func withoutKernelSupportTheClassFallsBackToNetClsAndSaysWhy() throws {
        var caps = KernelCapabilities.stock
        caps.cgroup2 = false
        caps.cgroup2Problem = "cgroup2 is not mounted"
        let d = try Planner.plan(policy([classes[1], classes[3]], default: "rest"), capabilities: caps)
        #expect(d.namespace("web")?.classes.map(\.classification) == [.netCls, .netCls])
        #expect(d.namespace("web")?.filter.kind == .cgroup)
        #expect(
            d.notes.contains { $0.contains("class backup is classified through net_cls") && $0.contains("not mounted") }
        )

        var p = policy([classes[1], classes[3]], default: "rest")
        p.settings.classifier = .cgroup
        let forced = try Planner.plan(p, capabilities: .stock)
        #expect(forced.namespace("web")?.classes.first?.classification == .netCls)
        #expect(forced.notes.contains { $0.contains("settings.classifier = \"cgroup\"") })

        let deep = (1...17).map { "d\($0)" }.joined(separator: "/")
        let tooDeep = try Planner.plan(
            policy(
                [ClassPolicy(name: "x", rate: .mbit(1), match: MatchRules(cgroup: [deep])), classes[3]], default: "rest"
            ),
            capabilities: .stock)
        #expect(tooDeep.namespace("web")?.classes.first?.classification == .netCls)
        #expect(tooDeep.notes.contains { $0.contains("deeper than the 16 levels") })
    }

    @Test func mapEntryOperationsInvertAndSayTheirBpftoolCommand() {
        let e = Cgroup2Entry(path: "system.slice", id: 0x1234, classid: TCHandle(major: 0x10, minor: 0x20))
        let add = Operation(namespace: "web", device: "eth0", action: .mapCgroup(e, old: nil))
        #expect(add.inverse.action == .unmapCgroup(e))
        #expect(add.verb == "add" && add.object == "bpf map")
        let name = Cgroup2Entry.objectName(namespace: "web")
        #expect(name.count == 15 && name.hasPrefix("ns_cg2_"))
        #expect(
            add.command
                == "bpftool map update name \(name) key hex 34 12 00 00 00 00 00 00 value hex 20 00 10 00  # cgroup2 /system.slice -> 10:20"
        )
        let change = Operation(namespace: "web", action: .mapCgroup(e, old: TCHandle(major: 0x10, minor: 0x30)))
        guard case .mapCgroup(let back, let old) = change.inverse.action else {
            Issue.record("the inverse of a change is a change")
            return
        }
        #expect(back.classid == TCHandle(major: 0x10, minor: 0x30) && old == e.classid)
    }
    /// A namespace's path classes share one map of `Cgroup2Rule.maxEntries`: past it they go through
    /// net_cls with a note, at plan time (apply failed half-way at the 4097th entry). The time to
    /// plan that many paths is printed (35 ms here; 18 s when each path was compared with each).
    @Test func pathsPastTheMapsRoomGoThroughNetClsAndSaySo() throws {
        func many(_ n: Int) -> [ClassPolicy] {
            let paths = (0..<n).map { "system.slice/u\($0).service" }
            return [
                ClassPolicy(name: "units", rate: .mbit(10), match: MatchRules(cgroup: Array(paths.prefix(n / 2)))),
                ClassPolicy(name: "more", rate: .mbit(10), match: MatchRules(cgroup: Array(paths.dropFirst(n / 2)))),
                ClassPolicy(name: "rest", rate: .mbit(5)),
            ]
        }
        let clock = ContinuousClock()
        var fits: DesiredState?
        let took = try clock.measure {
            fits = try Planner.plan(policy(many(Cgroup2Rule.maxEntries), default: "rest"), capabilities: .stock)
        }
        print("planned \(Cgroup2Rule.maxEntries) cgroup v2 paths in \(took)")
        let ns = try #require(fits?.namespace("web"))
        #expect(ns.classes.map(\.classification) == [.cgroup2, .cgroup2, .unmatched])
        #expect(ns.cgroup2Rules.count == Cgroup2Rule.maxEntries)
        let over = try Planner.plan(policy(many(Cgroup2Rule.maxEntries + 1), default: "rest"), capabilities: .stock)
        #expect(over.namespace("web")?.classes.map(\.classification) == [.netCls, .netCls, .netCls])
        #expect(over.namespace("web")?.filter.kind != .cgroup2)
        #expect(
            over.notes.contains { $0.contains("4097 cgroup v2 paths, more than the classifier's map holds (4096)") })
    }

    /// The cover answers what comparing with every earlier path answered (`cgroupPrefix`), on
    /// random trees of paths with repeats, the root, and siblings sharing a name's prefix.
    @Test func theCoverAgreesWithComparingEveryPath() {
        let parts = ["a", "b", "ab", "a.slice", "x"]
        for seed in UInt64(1)...200 {
            var rng = SeededRandom(seed: seed)
            let paths = (0..<Int.random(in: 1...30, using: &rng)).map { _ in
                (0..<Int.random(in: 0...4, using: &rng)).map { _ in parts.randomElement(using: &rng)! }
                    .joined(separator: "/")
            }
            var cover = Cgroup2Cover()
            var earlier: [String] = []
            for p in paths {
                let want = earlier.firstIndex { cgroupPrefix($0, matches: p) }
                #expect(cover.covering(p) == want, "seed \(seed): \(p) after \(earlier)")
                cover.insert(p, at: earlier.count)
                earlier.append(p)
            }
        }
    }
}
