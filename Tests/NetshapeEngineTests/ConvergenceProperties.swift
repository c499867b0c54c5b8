import Foundation
import Logging
import NetshapeCore
import NetshapeEngine
import NetshapePolicy
import NetshapeTestSupport
import Testing

/// A policy as the random walk edits it: every field of policy.md that `apply` must converge on.
struct ModelPolicy: CustomStringConvertible {
    struct Class {
        var name: String
        var rate: UInt64  // mbit
        var ceil: UInt64?
        var burstKB: UInt64?
        var cburstKB: UInt64?
        var priority: Int?
        var leaf: String?
        var comm: String?
        /// A cgroup v2 path rule (the class is then classified by path, when the kernel can).
        var cgroup: String?
    }
    struct Namespace {
        var name: String
        var egress: UInt64  // mbit
        var ingress: UInt64?
        var defaultClass: String?
        var leaf: String?
        var classes: [Class]
    }
    var leaf: String?
    var classifier: String?
    var namespaces: [Namespace]

    /// Leaf kinds the fake kernel's capabilities allow.
    static func leaves(_ caps: KernelCapabilities) -> [String] {
        ["bfifo", "pfifo", "auto"] + (caps.fqCodel ? ["fq_codel"] : []) + (caps.sfq ? ["sfq"] : [])
    }
    static let comms = ["nginx", "rsync", "curl", "postgres"]
    /// Paths of the walk machine's cgroup v2 tree; `late.scope` never exists, `system.slice` is the
    /// parent of two others (a prefix rule and the shadowing of a later class's path).
    static let cgroupPaths = [
        "system.slice", "system.slice/web.service", "system.slice/db.service", "docker/c0ffee", "user.slice/late.scope",
    ]
    static let classNames = ["web", "db", "bulk", "ssh", "backup", "video", "other"]

    /// Restores what policy.md requires of a valid policy after an edit.
    mutating func normalize() {
        for i in namespaces.indices {
            var ns = namespaces[i]
            var seen = Set<String>()
            ns.classes = ns.classes.filter { seen.insert($0.name).inserted }
            let share = max(1, ns.egress / UInt64(ns.classes.count + 1))
            for j in ns.classes.indices {
                ns.classes[j].rate = min(max(1, ns.classes[j].rate), share)
                if let c = ns.classes[j].ceil { ns.classes[j].ceil = min(max(c, ns.classes[j].rate), ns.egress) }
            }
            if let d = ns.defaultClass, !ns.classes.contains(where: { $0.name == d }) { ns.defaultClass = nil }
            if ns.defaultClass == nil {
                for j in ns.classes.indices {
                    ns.classes[j].comm = nil
                    ns.classes[j].cgroup = nil
                }
            }
            namespaces[i] = ns
        }
    }

    var description: String { toml }

    var toml: String {
        var out = "version = 1\n"
        if leaf != nil || classifier != nil {
            out += "[settings]\n"
            if let l = leaf { out += "leaf = \"\(l)\"\n" }
            if let c = classifier { out += "classifier = \"\(c)\"\n" }
        }
        for ns in namespaces {
            out += "[[namespace]]\nname = \"\(ns.name)\"\ndevice = \"eth0\"\negress = \"\(ns.egress)mbit\"\n"
            if let i = ns.ingress { out += "ingress = \"\(i)mbit\"\n" }
            if let d = ns.defaultClass { out += "default = \"\(d)\"\n" }
            if let l = ns.leaf { out += "leaf = \"\(l)\"\n" }
            for c in ns.classes {
                out += "[[namespace.class]]\nname = \"\(c.name)\"\nrate = \"\(c.rate)mbit\"\n"
                if let v = c.ceil { out += "ceil = \"\(v)mbit\"\n" }
                if let v = c.burstKB { out += "burst = \"\(v)kb\"\n" }
                if let v = c.cburstKB { out += "cburst = \"\(v)kb\"\n" }
                if let v = c.priority { out += "priority = \(v)\n" }
                if let v = c.leaf { out += "leaf = \"\(v)\"\n" }
                if let v = c.comm { out += "match.comm = [\"\(v)\"]\n" }
                if let v = c.cgroup { out += "match.cgroup = [\"\(v)\"]\n" }
            }
        }
        return out
    }

    static func randomClass(_ r: inout SeededRandom, _ caps: KernelCapabilities, name: String) -> Class {
        var c = Class(
            name: name, rate: UInt64.random(in: 1...200, using: &r),
            ceil: Bool.random(using: &r) ? UInt64.random(in: 1...1000, using: &r) : nil,
            burstKB: Bool.random(using: &r) ? UInt64.random(in: 2...60, using: &r) : nil,
            cburstKB: Bool.random(using: &r) ? UInt64.random(in: 2...60, using: &r) : nil,
            priority: Bool.random(using: &r) ? Int.random(in: 0...7, using: &r) : nil,
            leaf: Bool.random(using: &r) ? leaves(caps).randomElement(using: &r) : nil,
            comm: Bool.random(using: &r) ? comms.randomElement(using: &r) : nil,
            cgroup: Int.random(in: 0..<3, using: &r) == 0 ? cgroupPaths.randomElement(using: &r) : nil)
        // A class is picked by comm (the sock_create path) or by cgroup path (the cgroup2 path).
        if c.cgroup != nil { c.comm = nil }
        return c
    }

    static func randomNamespace(_ r: inout SeededRandom, _ caps: KernelCapabilities, name: String) -> Namespace {
        var ns = Namespace(
            name: name, egress: UInt64.random(in: 10...2000, using: &r),
            ingress: Bool.random(using: &r) ? UInt64.random(in: 1...500, using: &r) : nil, defaultClass: nil,
            leaf: nil, classes: [])
        for n in classNames.shuffled(using: &r).prefix(Int.random(in: 0...4, using: &r)) {
            ns.classes.append(randomClass(&r, caps, name: n))
        }
        if !ns.classes.isEmpty && Bool.random(using: &r) { ns.defaultClass = ns.classes.randomElement(using: &r)?.name }
        return ns
    }

    /// One random edit; returns what it did, for the failure message.
    mutating func edit(_ r: inout SeededRandom, _ caps: KernelCapabilities) -> String {
        func pick() -> Int { Int.random(in: 0..<namespaces.count, using: &r) }
        let i = pick()
        let kind = Int.random(in: 0..<17, using: &r)
        var ns = namespaces[i]
        defer {
            if i < namespaces.count { namespaces[i] = ns }
            normalize()
        }
        let j = ns.classes.isEmpty ? nil : Int.random(in: 0..<ns.classes.count, using: &r)
        switch (kind, j) {
        case (0, _):
            ns.egress = UInt64.random(in: 10...2000, using: &r)
            return "\(ns.name): egress \(ns.egress)mbit"
        case (1, _):
            ns.ingress = Bool.random(using: &r) ? UInt64.random(in: 1...500, using: &r) : nil
            return "\(ns.name): ingress \(ns.ingress.map { "\($0)mbit" } ?? "removed")"
        case (2, _):
            let name = Self.classNames.randomElement(using: &r) ?? "x"
            ns.classes.insert(
                Self.randomClass(&r, caps, name: name), at: Int.random(in: 0...ns.classes.count, using: &r))
            return "\(ns.name): add class \(name)"
        case (3, let j?):
            return "\(ns.name): remove class \(ns.classes.remove(at: j).name)"
        case (4, let j?):
            let old = ns.classes[j].name
            ns.classes[j].name = Self.classNames.randomElement(using: &r) ?? old
            return "\(ns.name): rename class \(old) to \(ns.classes[j].name)"
        case (5, let j?):
            ns.classes[j].rate = UInt64.random(in: 1...300, using: &r)
            return "\(ns.name)/\(ns.classes[j].name): rate \(ns.classes[j].rate)mbit"
        case (6, let j?):
            ns.classes[j].ceil = Bool.random(using: &r) ? UInt64.random(in: 1...2000, using: &r) : nil
            return "\(ns.name)/\(ns.classes[j].name): ceil \(String(describing: ns.classes[j].ceil))"
        case (7, let j?):
            ns.classes[j].burstKB = Bool.random(using: &r) ? UInt64.random(in: 2...60, using: &r) : nil
            ns.classes[j].cburstKB = Bool.random(using: &r) ? UInt64.random(in: 2...60, using: &r) : nil
            return "\(ns.name)/\(ns.classes[j].name): burst/cburst"
        case (8, let j?):
            ns.classes[j].priority = Bool.random(using: &r) ? Int.random(in: 0...7, using: &r) : nil
            return "\(ns.name)/\(ns.classes[j].name): priority \(String(describing: ns.classes[j].priority))"
        case (9, let j?):
            ns.classes[j].leaf = Bool.random(using: &r) ? Self.leaves(caps).randomElement(using: &r) : nil
            return "\(ns.name)/\(ns.classes[j].name): leaf \(String(describing: ns.classes[j].leaf))"
        case (10, _):
            ns.defaultClass = Bool.random(using: &r) ? ns.classes.randomElement(using: &r)?.name : nil
            return "\(ns.name): default \(String(describing: ns.defaultClass))"
        case (11, let j?):
            if ns.defaultClass == nil { ns.defaultClass = ns.classes.randomElement(using: &r)?.name }
            ns.classes[j].comm = Bool.random(using: &r) ? Self.comms.randomElement(using: &r) : nil
            if ns.classes[j].comm != nil { ns.classes[j].cgroup = nil }
            return "\(ns.name)/\(ns.classes[j].name): match.comm \(String(describing: ns.classes[j].comm))"
        case (12, _):
            leaf = Bool.random(using: &r) ? Self.leaves(caps).randomElement(using: &r) : nil
            ns.leaf = Bool.random(using: &r) ? Self.leaves(caps).randomElement(using: &r) : nil
            return "settings.leaf \(String(describing: leaf)), \(ns.name).leaf \(String(describing: ns.leaf))"
        case (13, _):
            let kinds = ["auto", "bpf"] + (caps.clsCgroup ? ["cgroup"] : [])
            classifier = Bool.random(using: &r) ? kinds.randomElement(using: &r) : nil
            return "settings.classifier \(String(describing: classifier))"
        case (15, let j?):
            if ns.defaultClass == nil { ns.defaultClass = ns.classes.randomElement(using: &r)?.name }
            ns.classes[j].cgroup = Bool.random(using: &r) ? Self.cgroupPaths.randomElement(using: &r) : nil
            // A class is picked by comm (the sock_create path) or by cgroup path (the cgroup2 path).
            if ns.classes[j].cgroup != nil { ns.classes[j].comm = nil }
            return "\(ns.name)/\(ns.classes[j].name): match.cgroup \(String(describing: ns.classes[j].cgroup))"
        case (14, _) where namespaces.count == 1:
            let other = namespaces[0].name == "a" ? "b" : "a"
            namespaces.append(Self.randomNamespace(&r, caps, name: other))
            return "add namespace \(other)"
        case (14, _):
            let gone = namespaces.remove(at: i)
            return "remove namespace \(gone.name)"
        default:
            ns = Self.randomNamespace(&r, caps, name: ns.name)
            return "\(ns.name): rewritten"
        }
    }
}

/// An engine that logs only what is critical: thousands of applies would otherwise print every
/// operation.
func quietEngine(_ k: FakeKernel) -> Engine {
    var logger = Logger(label: "netshape.test")
    logger.logLevel = .critical
    return Engine(kernel: k, logger: logger)
}

/// Every optional kernel feature on for one seed in `every`, none for the others.
func walkCapabilities(seed: UInt64, every: UInt64) -> KernelCapabilities {
    seed % every == 0 ? KernelCapabilities(clsCgroup: true, clsBpf: true, fqCodel: true, sfq: true) : .minimal
}

/// The fake machine of the walk: namespace "a" whose device has a veth peer in the host (ingress
/// there), "b" with none (ingress through an IFB), processes that the rules' comms pick.
func walkMachine(_ caps: KernelCapabilities) -> FakeKernel {
    let k = FakeKernel(capabilities: caps)
    k.addNamespace(
        "a", processes: [ProcessInfo(pid: 100, comm: "nginx"), ProcessInfo(pid: 101, comm: "rsync")],
        peer: "veth-a")
    k.addNamespace("b", processes: [ProcessInfo(pid: 200, comm: "curl"), ProcessInfo(pid: 201, comm: "postgres")])
    for p in ModelPolicy.cgroupPaths where !p.hasSuffix("late.scope") { k.makeCgroup2(p) }
    return k
}

/// A cgroup of the walk's tree removed and made again (a service restarted, a directory renamed
/// back): it comes back with a new id, which the next apply must map in place of the old one.
func recreateCgroup(_ k: FakeKernel, _ r: inout SeededRandom) -> String {
    let p = ModelPolicy.cgroupPaths.filter { !$0.hasSuffix("late.scope") }.randomElement(using: &r) ?? "docker/c0ffee"
    k.removeCgroup2(p)
    k.makeCgroup2(p)
    return "re-create cgroup \(p)"
}

/// The machine's configuration, comparable across rollback: leaf qdisc handles are the kernel's
/// choice (a re-created leaf gets a new one), counters and list order are not configuration.
struct ConfigSnapshot: Equatable, CustomStringConvertible {
    var devices: [String: [String]]
    var cgroups: [String: String]
    var ownership: OwnershipRecord
    var sockCreate: [String]

    init(_ k: FakeKernel) {
        func qdisc(_ q: ObservedQdisc) -> String {
            let handle = q.parent == .root || q.parent == .ingress ? "\(q.handle)" : "auto"
            return
                "qdisc \(handle) parent \(q.parent) \(q.kind) \(q.queue.map { "\($0)" } ?? "") def \(q.htbDefault ?? 0)"
        }
        func cls(_ c: ObservedClass) -> String { "class \(c.spec.classid) \(c.spec.parent) \(c.spec.tcArguments)" }
        var d: [String: [String]] = [:]
        for (name, ns) in k.namespaces {
            d[name] =
                (ns.qdiscs.map(qdisc) + ns.classes.map(cls)
                + ns.filters.map { "filter \($0.parent) \($0.kind) \($0.priority) \($0.handle)" }
                + ns.links.sorted().map { "link \($0)" } + (ns.ingressQdisc ? ["ingress qdisc"] : [])
                + (ns.cgroup2Map ?? [:]).map { "cgroup2 map \($0.key) -> \($0.value)" }).sorted()
        }
        for (name, dev) in k.hostDevices { d["host:" + name] = (dev.qdiscs.map(qdisc) + dev.classes.map(cls)).sorted() }
        devices = d
        cgroups = k.cgroups.mapValues { "\($0.classid) \($0.pids.sorted())" }
        ownership = k.ownership
        sockCreate =
            (k.sockCreateAttached ? ["attached"] : [])
            + k.sockCreateMap.sorted { $0.key < $1.key }.map { "\($0) \($1)" }
    }

    var description: String { "\(devices)\n\(cgroups)\n\(ownership)\nsock_create \(sockCreate)" }
}

/// The first seed of the walks: 1 in CI (deterministic), or NETSHAPE_WALK_SEED to explore others;
/// a failure prints its seed, and the same variable set to it replays that walk first.
let walkSeedBase: UInt64 = ProcessInfo.processInfo.environment["NETSHAPE_WALK_SEED"].flatMap { UInt64($0) } ?? 1

@Suite struct ConvergenceProperties {
    static let policyPath = "/etc/netshape/walk.toml"

    /// Seeded random walks of policy edits against the fake kernel: after every step apply
    /// converges, a plan right after is empty, classes that stayed kept their counters, the record
    /// names every cgroup; after reset the machine equals the one before the first apply.
    @Test func randomEditWalksConverge() throws {
        let sequences = 2000
        let steps = 10
        for seed in walkSeedBase...(walkSeedBase + UInt64(sequences) - 1) {
            var r = SeededRandom(seed: seed)
            // A third each: a stock kernel with the sock_create hook, this project's with it, without it.
            var caps = walkCapabilities(seed: seed, every: 3)
            caps.sockCreate = seed % 3 != 2
            let k = walkMachine(caps)
            let engine = quietEngine(k)
            let pristine = ConfigSnapshot(k)
            var model = ModelPolicy(
                leaf: nil, classifier: nil,
                namespaces: [ModelPolicy.randomNamespace(&r, caps, name: "a")]
                    + (Bool.random(using: &r) ? [ModelPolicy.randomNamespace(&r, caps, name: "b")] : []))
            model.normalize()
            var edits = ["start"]
            func context() -> Comment {
                "seed \(seed), edits: \(edits.joined(separator: "; "))\npolicy:\n\(model.toml)"
            }
            for _ in 0..<steps {
                // Traffic through every class, so a class that is deleted and re-created shows.
                for (name, ns) in k.namespaces {
                    for c in ns.classes { k.count(namespace: name, classid: c.spec.classid, bytes: 1000, packets: 1) }
                }
                let before = k.namespaces.mapValues {
                    Dictionary($0.classes.map { ($0.spec.classid, $0.stats.bytes) }, uniquingKeysWith: max)
                }
                let policy: Policy
                do { policy = try PolicyParser.parse(model.toml, file: "walk.toml") } catch {
                    Issue.record("the walk made an invalid policy: \(error)\n\(context())")
                    return
                }
                k.clearLog()
                let wasAttached = k.sockCreateAttached
                let report: ApplyReport
                do { report = try engine.apply(policy, policyPath: Self.policyPath) } catch {
                    Issue.record("apply failed: \(error)\n\(context())")
                    return
                }
                guard report.remaining.isEmpty else {
                    Issue.record("not converged: \(report.remaining.map(\.command))\n\(context())")
                    return
                }
                let again = try engine.plan(policy, policyPath: Self.policyPath)
                guard again.operations.isEmpty else {
                    Issue.record("plan after apply not empty: \(again.operations.map(\.command))\n\(context())")
                    return
                }
                // Edits change the sock_create map in place: the program stays attached while it is used.
                if wasAttached && k.sockCreateAttached,
                    let op = k.log.first(where: { [.attachSockCreate, .detachSockCreate].contains($0.action) })
                {
                    Issue.record("an edit re-attached the sock_create program: \(op.command)\n\(context())")
                    return
                }
                // The kernel path never disagrees with where apply put each process.
                for (name, ns) in k.namespaces {
                    for p in ns.processes {
                        guard let v = k.sockCreateVerdict(namespace: name, comm: p.comm), v != .unspecified else {
                            continue
                        }
                        let placed = k.cgroups.values.first { $0.pids.contains(p.pid) }?.classid
                        guard placed == v else {
                            Issue.record(
                                "sock_create gives \(p.comm) class \(v), apply placed it in \(String(describing: placed))\n\(context())"
                            )
                            return
                        }
                    }
                }
                if caps.sockCreate {
                    let served = policy.namespaces.contains { $0.classes.contains { !$0.match.comm.isEmpty } }
                    if served != k.sockCreateAttached {
                        Issue.record(
                            "sock_create attached: \(k.sockCreateAttached), comm rules: \(served)\n\(context())")
                        return
                    }
                }
                let rebuilt = Set(
                    k.log.compactMap { op -> String? in
                        if case .deleteRootQdisc = op.action { return op.namespace + "/" + op.device }
                        return nil
                    })
                for (name, ns) in k.namespaces where !rebuilt.contains(name + "/eth0") {
                    for c in ns.classes {
                        if let old = before[name]?[c.spec.classid], c.stats.bytes < old {
                            Issue.record("class \(name) \(c.spec.classid) lost its counters\n\(context())")
                            return
                        }
                    }
                }
                for ns in policy.namespaces {
                    let recorded = Set(k.ownership.namespaces[ns.name]?.cgroups ?? [])
                    // Classes classified by cgroup v2 path have no net_cls cgroup, nor does the default
                    // class beside only such classes; with none left the entry has no directory either.
                    guard let planned = report.state?.desired.namespace(ns.name) else { continue }
                    let byPath = Set(
                        ns.classes.filter {
                            $0.match.isCgroupPathsOnly && caps.cgroup2 && policy.settings.classifier != .cgroup
                        }.map(\.name))
                    #expect(Set(planned.classes.filter { $0.classification == .cgroup2 }.compactMap(\.name)) == byPath)
                    let netCls = planned.classes.filter { $0.classification == .netCls }.compactMap(\.name)
                    let expected = Set(
                        netCls.map { CgroupPaths.class($0, in: ns.name) }
                            + (netCls.isEmpty ? [] : [CgroupPaths.namespace(ns.name)]))
                    guard recorded.isSuperset(of: expected), recorded.count <= expected.count + 1 else {
                        Issue.record(
                            "record names cgroups \(recorded.sorted()), expected \(expected.sorted())\n\(context())")
                        return
                    }
                    // The map sends exactly the existing directories the first class naming (or
                    // covering) them claims to that class; a later class's path inside it is dropped.
                    var want: [UInt64: TCHandle] = [:]
                    var claimed: [String] = []
                    for c in ns.classes where byPath.contains(c.name) {
                        for raw in c.match.cgroup {
                            let p = Cgroup2Rule.normalize(raw)
                            if claimed.contains(where: { cgroupPrefix($0, matches: p) }) { continue }
                            claimed.append(p)
                            let cid = planned.classes.first { $0.name == c.name }?.spec.classid
                            if let id = k.cgroup2Dirs?[p], let cid { want[id] = cid }
                        }
                    }
                    let have = k.namespaces[ns.name]?.cgroup2Map
                    guard byPath.isEmpty ? have == nil : have == want else {
                        Issue.record("cgroup2 map \(String(describing: have)), expected \(want)\n\(context())")
                        return
                    }
                }
                edits.append(Int.random(in: 0..<4, using: &r) == 0 ? recreateCgroup(k, &r) : model.edit(&r, caps))
            }
            let policy = try PolicyParser.parse(model.toml, file: "walk.toml")
            _ = try engine.reset(policyPath: Self.policyPath, policy: policy)
            var after = ConfigSnapshot(k)
            after.cgroups["netshape"] = nil  // netshape's top directory is shared by every policy and stays
            guard after == pristine else {
                Issue.record("reset did not restore the machine:\n\(after)\nexpected:\n\(pristine)\n\(context())")
                return
            }
        }
    }

    /// For edits A → B: fail each operation of B's apply in turn. After each failure the machine
    /// and the record equal the state before, and the next apply converges.
    @Test func aFaultAtEveryOperationRollsBack() throws {
        var checked = 0
        var sockFaults = 0
        for seed in walkSeedBase...(walkSeedBase + 59) {
            var r = SeededRandom(seed: seed &* 7919)
            var caps = walkCapabilities(seed: seed, every: 2)
            caps.sockCreate = seed % 4 != 1
            var a = ModelPolicy(
                leaf: nil, classifier: nil, namespaces: [ModelPolicy.randomNamespace(&r, caps, name: "a")])
            a.normalize()
            var b = a
            var edits: [String] = []
            for _ in 0..<3 { edits.append(b.edit(&r, caps)) }
            // From scratch (every object created) and from A (changes and removals).
            for start in [nil, a] {
                let probe = walkMachine(caps)
                let probeEngine = quietEngine(probe)
                if let s = start {
                    _ = try probeEngine.apply(try PolicyParser.parse(s.toml, file: "a"), policyPath: "/p")
                }
                let count = try probeEngine.plan(try PolicyParser.parse(b.toml, file: "b"), policyPath: "/p").operations
                    .count
                for index in 0..<count {
                    let k = walkMachine(caps)
                    let engine = quietEngine(k)
                    if let s = start {
                        _ = try engine.apply(try PolicyParser.parse(s.toml, file: "a"), policyPath: "/p")
                    }
                    let before = ConfigSnapshot(k)
                    var n = 0
                    k.failWhen = { op in
                        defer { n += 1 }
                        if n == index && op.object == "sockcreate" { sockFaults += 1 }
                        return n == index ? FakeKernelError(errno: 5, "injected EIO at operation \(index)") : nil
                    }
                    let context: Comment =
                        "seed \(seed), from \(start == nil ? "scratch" : "A"), operation \(index) of \(count), edits \(edits)\nB:\n\(b.toml)"
                    #expect(throws: ApplyError.self, context) {
                        try engine.apply(try PolicyParser.parse(b.toml, file: "b"), policyPath: "/p")
                    }
                    k.failWhen = nil
                    let after = ConfigSnapshot(k)
                    guard after == before else {
                        Issue.record("rollback left the machine changed:\n\(after)\nexpected:\n\(before)\n\(context)")
                        return
                    }
                    let policyB = try PolicyParser.parse(b.toml, file: "b")
                    let report = try engine.apply(policyB, policyPath: "/p")
                    #expect(report.remaining.isEmpty, context)
                    #expect(try engine.plan(policyB, policyPath: "/p").operations.isEmpty, context)
                    checked += 1
                }
            }
        }
        #expect(checked > 500, "the walk injected faults at \(checked) operation indexes")
        #expect(sockFaults > 20, "faults at \(sockFaults) sock_create operations")
    }
}
