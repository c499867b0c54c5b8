import NetshapeCore
import NetshapeTestSupport
import Testing

/// Which processes a cgroup-path class covers, as `status` lists them: the kernel's order (socket
/// priority, net_cls, then the deepest mapped ancestor), over hand-made subtrees.
@Suite struct Cgroup2MembersTests {
    typealias Dir = ObservedCgroup2Members.Directory
    typealias Proc = ObservedCgroup2Members.Process

    static let a = TCHandle(major: 1, minor: 10)
    static let b = TCHandle(major: 1, minor: 11)

    static func proc(_ comm: String = "sh", netCls: TCHandle = .unspecified, netns: String = "4:1") -> Proc {
        Proc(comm: comm, uid: 0, gid: 0, netnsID: netns, netClsClassid: netCls)
    }

    @Test func aChildCgroupIsInItsAncestorsClassAndADeeperMappedPathWins() {
        let tree = ObservedCgroup2Members(
            directories: [
                "app": Dir(id: 1, pids: [10]), "app/worker": Dir(id: 2, pids: [11, 12]),
                "app/special": Dir(id: 3, pids: [13]), "app/special/x": Dir(id: 4, pids: [14]),
            ],
            processes: [10: Self.proc(), 11: Self.proc(), 12: Self.proc(), 13: Self.proc(), 14: Self.proc()])
        let m = tree.members(map: [1: Self.a, 3: Self.b])
        #expect(m[Self.a] == [10, 11, 12])
        #expect(m[Self.b] == [13, 14])
        // Unmapped directories decide nothing: with no map entry nobody is a path member.
        #expect(tree.members(map: [:]).isEmpty)
    }

    @Test func netClsAndSocketPriorityComeBeforeThePathAsInTheKernel() {
        let tree = ObservedCgroup2Members(
            directories: ["app": Dir(id: 1, pids: [10, 11, 12, 13])],
            processes: [
                10: Self.proc(), 11: Self.proc(netCls: Self.b), 12: Self.proc("nginx"),
                13: Self.proc("nginx", netns: "4:other"),
            ])
        let table = [SockRule(comm: "nginx"): SockVerdict(rank: 0, classid: Self.b)]
        let m = tree.members(map: [1: Self.a], sockTable: table, netnsID: "4:1")
        // 11 has a net_cls classid (asked first by the program); 12's sockets get their priority at
        // creation in this namespace; 13 is in another namespace, where the table does not apply.
        #expect(m[Self.a] == [10, 13])
        // A deferring entry (classid 0) sets no priority: the path still decides.
        let defer_ = [SockRule(comm: "nginx"): SockVerdict(rank: 0, classid: .unspecified)]
        #expect(tree.members(map: [1: Self.a], sockTable: defer_, netnsID: "4:1")[Self.a] == [10, 12, 13])
    }

    @Test func aProcessThatExitedAndLevelsBeyondTheWalkAreLeftOut() {
        let deep = (1...5).map { "l\($0)" }
        var dirs: [String: Dir] = [:]
        for n in 1...5 { dirs[deep.prefix(n).joined(separator: "/")] = Dir(id: UInt64(n), pids: [Int32(n)]) }
        var procs: [Int32: Proc] = [:]
        for n in 1...4 { procs[Int32(n)] = Self.proc() }  // 5 exited between the two reads
        let tree = ObservedCgroup2Members(directories: dirs, processes: procs)
        // The program walks levels maxLevel…0: an entry at level 4 is never looked up with maxLevel 3.
        let m = tree.members(map: [4: Self.b, 1: Self.a], maxLevel: 3)
        #expect(m[Self.a] == [1, 2, 3, 4])
        #expect(m[Self.b] == nil)
        #expect(tree.members(map: [4: Self.b, 1: Self.a], maxLevel: 16)[Self.b] == [4])
    }

    /// Random path-class policies and random processes: the class `members` puts a process in (over
    /// the map the planner's rules make) is the first class in policy order whose path covers it,
    /// policy.md's rule, the one `ProcessMatcher` applies for net_cls classes.
    @Test func membersAgreeWithFirstMatchOnRandomPolicies() throws {
        let seed = UInt64.random(in: 1...UInt64(UInt32.max))
        var rng = SeededRandom(seed: seed)
        let names = ["a", "b", "c"]
        func randomPath() -> String {
            (0..<Int.random(in: 1...3, using: &rng)).map { _ in names.randomElement(using: &rng)! }
                .joined(separator: "/")
        }
        for round in 0..<200 {
            let classes = (0..<Int.random(in: 1...4, using: &rng)).map { i in
                (name: "k\(i)", paths: (0..<Int.random(in: 1...2, using: &rng)).map { _ in randomPath() })
            }
            let policy = NetshapeCoreTests.policy(
                classes.map { ClassPolicy(name: $0.name, rate: .mbit(1), match: MatchRules(cgroup: $0.paths)) },
                default: nil)
            let ns = try #require(try Planner.plan(policy, capabilities: .stock).namespace("web"))
            // Every directory of a 3-deep tree over the names, each with one process.
            var dirs: [String: Dir] = [:]
            var procs: [Int32: Proc] = [:]
            var all = [""]
            for _ in 0..<3 { all += all.flatMap { p in names.map { p.isEmpty ? $0 : p + "/" + $0 } } }
            var ids: [String: UInt64] = [:]
            for (i, p) in Set(all).sorted().enumerated() {
                ids[p] = UInt64(100 + i)
                dirs[p] = Dir(id: UInt64(100 + i), pids: [Int32(i + 1)])
                procs[Int32(i + 1)] = Self.proc()
            }
            let map = Dictionary(ns.cgroup2Rules.map { (ids[$0.path]!, $0.classid) }, uniquingKeysWith: { a, _ in a })
            let members = ObservedCgroup2Members(directories: dirs, processes: procs).members(map: map)
            var got: [Int32: TCHandle] = [:]
            for (classid, pids) in members { for p in pids { got[p] = classid } }
            for (path, dir) in dirs {
                let first = ns.classes.first { c in c.match.cgroup.contains { cgroupPrefix($0, matches: path) } }
                guard got[dir.pids[0]] == first?.spec.classid else {
                    let seen = got[dir.pids[0]].map { "\($0)" } ?? "no class"
                    let want = first?.displayName ?? "none"
                    Issue.record(
                        Comment(
                            rawValue:
                                "seed \(seed) round \(round): /\(path) is in \(seen), first match is \(want) (\(classes))"
                        ))
                    return
                }
            }
        }
    }
}
