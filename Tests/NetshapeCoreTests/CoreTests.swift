import Testing

@testable import NetshapeCore

@Suite struct UnitTests {
    @Test(
        arguments: [
            ("1mbit", 125_000), ("1mbps", 1_000_000), ("1Mbit", 125_000), ("1MBps", 1_000_000),
            ("100mbit", 12_500_000), ("1gbit", 125_000_000), ("2.5gbit", 312_500_000), ("1kbit", 125),
            ("1kibit", 128), ("1mibit", 131_072), ("8bit", 1), ("8", 1), ("1000000", 125_000),
            ("1kbps", 1000), ("1kibps", 1024), ("10tbit", 1_250_000_000_000), (" 5mbit ", 625_000), ("1e6", 125_000),
        ] as [(String, UInt64)])
    func ratesFollowTc(_ text: String, _ bytes: UInt64) throws {
        let r = try #require(Rate(parsing: text))
        #expect(r.bytesPerSecond == bytes)
    }

    @Test(arguments: ["", "mbit", "10 mbits", "1ebit", "-5mbit", "10%", "abc"])
    func notRates(_ text: String) { #expect(Rate(parsing: text) == nil) }

    @Test func subByteRatesRoundToZeroLikeTc() { #expect(Rate(parsing: "7bit")?.bytesPerSecond == 0) }

    @Test(arguments: [
        (Rate.mbit(100), "100mbit"), (.gbit(2), "2gbit"), (.kbit(1501), "1501kbit"),
        (Rate(bytesPerSecond: 187_500), "1.5mbit"), (Rate(bytesPerSecond: 1), "8bit"),
    ])
    func ratesPrintShortestExactSpelling(_ r: Rate, _ text: String) {
        #expect(r.description == text)
        #expect(Rate(parsing: text) == r)
    }

    @Test(
        arguments: [
            ("1500", 1500), ("1500b", 1500), ("64kb", 65_536), ("64k", 65_536), ("1mb", 1_048_576), ("2M", 2_097_152),
            ("1gb", 1_073_741_824), ("8kbit", 1024), ("1mbit", 131_072),
        ] as [(String, UInt64)])
    func sizesFollowTc(_ text: String, _ bytes: UInt64) throws {
        #expect(try #require(Size(parsing: text)).bytes == bytes)
    }

    @Test func sizesRejectUnknownSuffixes() {
        #expect(Size(parsing: "64kib") == nil)
        #expect(Size(parsing: "5gb") == nil)  // over what tc's u32 burst holds
    }
}

@Suite struct TCHandleTests {
    @Test func wireValueAndPrinting() {
        let h = TCHandle(major: 1, minor: 0x10)
        #expect(h.raw == 0x0001_0010)
        #expect(h.description == "1:10")
        #expect(TCHandle(major: 0x3811, minor: 0).description == "3811:")
        #expect(TCHandle.root.raw == 0xFFFF_FFFF)
        #expect(TCHandle.root.description == "root")
        #expect(TCHandle.ingress.raw == 0xFFFF_FFF1)
        #expect(h.qdisc == TCHandle(major: 1, minor: 0))
    }

    @Test(arguments: ["1:10", "1:", "ffff:fff1", "3811:fe2d", "root"])
    func parsesWhatItPrints(_ text: String) throws {
        let h = try #require(TCHandle(parsing: text))
        #expect(TCHandle(parsing: h.description) == h)
    }

    @Test(arguments: ["1", ":10", "1:2:3", "10000:1", "x:1"])
    func rejectsMalformed(_ text: String) { #expect(TCHandle(parsing: text) == nil) }
}

func policy(_ classes: [ClassPolicy], default d: String? = nil, egress: Rate = .mbit(100)) -> Policy {
    Policy(namespaces: [
        NamespacePolicy(
            name: "web", netns: .named("web"), device: "eth0", egress: egress,
            defaultClass: d, classes: classes)
    ])
}

@Suite struct PlannerTests {
    let classes = [
        ClassPolicy(name: "frontend", rate: .mbit(60), priority: 1, match: MatchRules(comm: ["nginx"])),
        ClassPolicy(name: "backup", rate: .mbit(5), ceil: .mbit(20), priority: 6),
        ClassPolicy(name: "other", rate: .mbit(10)),
    ]

    @Test func layoutFollowsThePolicy() throws {
        let d = try Planner.plan(policy(classes, default: "other"), capabilities: .stock)
        let ns = try #require(d.namespaces.first)
        #expect(ns.qdisc.handle.minor == 0)
        #expect(ns.rootClass.classid == TCHandle(major: ns.qdisc.handle.major, minor: 1))
        #expect(ns.rootClass.rate == .mbit(100))
        #expect(ns.classes.map(\.name) == ["frontend", "backup", "other"])
        #expect(ns.classes.allSatisfy { $0.spec.parent == ns.rootClass.classid })
        #expect(ns.qdisc.defaultMinor == ns.classes[2].spec.classid.minor)
        #expect(ns.classes[2].spec.classid.minor == Planner.defaultMinor, "the default class always has minor 2")
        #expect(ns.classes[0].spec.ceil == .mbit(100), "ceil defaults to the namespace egress")
        #expect(ns.classes[1].spec.ceil == .mbit(20))
        #expect(ns.classifier == .cgroup)
        #expect(ns.classes.allSatisfy { $0.leaf.queue == .fqCodel })
        #expect(
            ns.cgroups.map(\.relativePath) == ["netshape/web/frontend", "netshape/web/backup", "netshape/web/other"])
        #expect(Set(ns.allClasses.map(\.classid)).count == 4)
        #expect(d.notes.isEmpty)
    }

    @Test func minimalKernelFallsBackWithNotes() throws {
        let d = try Planner.plan(policy(classes, default: "other"), capabilities: .minimal)
        let ns = try #require(d.namespaces.first)
        #expect(ns.classifier == .bpf)
        #expect(ns.classes[0].leaf.queue == .bfifo(limit: 128 * 1024))
        #expect(d.notes.count == 2)
        #expect(d.notes[0].contains("cls_bpf"))
    }

    @Test func explicitChoicesTheKernelLacksAreRefused() {
        var p = policy(classes, default: "other")
        p.settings.classifier = .cgroup
        #expect(throws: PlanError.self) { try Planner.plan(p, capabilities: .minimal) }
        p.settings.classifier = .auto
        p.settings.leaf = .fqCodel
        #expect(throws: PlanError.self) { try Planner.plan(p, capabilities: .minimal) }
    }

    @Test func classidsAreStableWhenAClassIsAdded() throws {
        let before = try Planner.plan(policy(classes, default: "other"), capabilities: .stock)
        var more = classes
        more.insert(ClassPolicy(name: "api", rate: .mbit(10)), at: 0)
        let after = try Planner.plan(policy(more, default: "other"), capabilities: .stock)
        for c in before.namespaces[0].classes {
            #expect(after.namespaces[0].classes.first { $0.name == c.name }?.spec.classid == c.spec.classid)
        }
        #expect(after.namespaces[0].qdisc.handle == before.namespaces[0].qdisc.handle)
    }

    @Test func previousAssignmentsWin() throws {
        let prev = PreviousAssignments(majors: ["web": 0x42], minors: ["web": ["backup": 0x77]])
        let d = try Planner.plan(policy(classes, default: "other"), capabilities: .stock, previous: prev)
        #expect(d.namespaces[0].qdisc.handle.major == 0x42)
        #expect(d.namespaces[0].classes[1].spec.classid == TCHandle(major: 0x42, minor: 0x77))
    }

    @Test func noDefaultGetsAnImplicitDefaultClass() throws {
        let d = try Planner.plan(policy([ClassPolicy(name: "a", rate: .mbit(30))]), capabilities: .stock)
        let ns = try #require(d.namespaces.first)
        let implicit = try #require(ns.classes.last)
        #expect(implicit.name == nil)
        #expect(implicit.isDefault)
        #expect(implicit.spec.classid.minor == Planner.defaultMinor)
        #expect(implicit.spec.rate == .mbit(70), "what the classes leave of the egress")
        #expect(ns.qdisc.defaultMinor == Planner.defaultMinor)
        #expect(ns.cgroups.count == 1)
    }

    @Test func burstsNeverUseTcsTinyDefaults() {
        #expect(Planner.defaultBurst(for: .gbit(2)).bytes == 1_000_000)
        #expect(Planner.defaultBurst(for: .mbit(500)).bytes == 250_000)
        #expect(Planner.defaultBurst(for: .mbit(10)).bytes == 65_536)
        #expect(Planner.defaultBurst(for: .mbit(1)).bytes == 25_000)
        #expect(Planner.defaultBurst(for: .kbit(8)).bytes == 1600)
        #expect(Planner.defaultQuantum(for: .mbit(60)) == 7500)
        #expect(Planner.defaultQuantum(for: .kbit(100)) == 1514)
        #expect(Planner.defaultQuantum(for: .gbit(10)) == 200_000)
        #expect(Planner.bfifoLimit(for: .mbit(10)) == 128 * 1024)
        #expect(Planner.bfifoLimit(for: .gbit(1)) == 1_250_000)
    }

    @Test func fnvIsStable() {
        #expect(Planner.fnv1a("") == 0x811C_9DC5)
        #expect(Planner.fnv1a("a") == 0xE40C_292C)
    }
}

@Suite struct MatchingTests {
    let matcher = ProcessMatcher(users: ["www-data": 33], groups: ["backup": 34]) { p, t in t.contains(p) }

    @Test func everyKeyMustMatchAnyValue() {
        let p = ProcessInfo(
            pid: 10, comm: "nginx", exe: "/usr/sbin/nginx", uid: 33, gid: 33,
            cmdline: "nginx: worker process", cgroup: "/system.slice/nginx.service")
        #expect(matcher.matches(MatchRules(comm: ["nginx", "apache2"]), p))
        #expect(matcher.matches(MatchRules(comm: ["nginx"], user: [.name("www-data")]), p))
        #expect(!matcher.matches(MatchRules(comm: ["nginx"], user: [.name("root")]), p))
        #expect(matcher.matches(MatchRules(exe: ["/usr/*/nginx"]), p))
        #expect(!matcher.matches(MatchRules(exe: ["/usr/bin/*"]), p))
        #expect(matcher.matches(MatchRules(user: [.id(33)]), p))
        #expect(!matcher.matches(MatchRules(group: [.name("backup")]), p))
        #expect(matcher.matches(MatchRules(cmdline: ["worker"]), p))
        #expect(matcher.matches(MatchRules(cgroup: ["system.slice"]), p))
        #expect(matcher.matches(MatchRules(cgroup: ["/system.slice/nginx.service/"]), p))
        #expect(!matcher.matches(MatchRules(cgroup: ["system.slice/nginx"]), p))
        #expect(matcher.matches(MatchRules(pid: [10]), p))
        #expect(!matcher.matches(MatchRules(), p), "empty rules match nothing")
    }

    @Test func globs() {
        #expect(glob("*", matches: "/anything/at/all"))
        #expect(glob("/usr/bin/rsync", matches: "/usr/bin/rsync"))
        #expect(!glob("/usr/bin/rsync", matches: "/usr/bin/rsync2"))
        #expect(glob("/opt/*/bin/?ython", matches: "/opt/x/y/bin/python"))
        #expect(!glob("/opt/*.so", matches: "/opt/a.so.1"))
    }
}
