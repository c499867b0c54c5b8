import Foundation
import NetshapeCore
import NetshapeKernel
import NetshapeTestSupport
import Testing

/// Issue "Every edit converges, and netshape always knows what it made", on the real kernel.
/// Part of the serialized suite. Tests that read or reset every record use a private state
/// directory, so they never see another policy's records on this host.
extension ApplyIntegrationTests {
    /// Everything tc and cgroupfs say about a scratch pair, and the records in `stateDir`.
    func fullSnapshot(_ s: Scratch, stateDir: String? = nil) throws -> String {
        var out = try s.snapshot()
        out += try must([tc, "-n", s.server, "qdisc", "show"])
        out += try must([ip, "-n", s.client, "-d", "link", "show"]).replacingOccurrences(
            of: #"\s+\d+ bytes.*"#, with: "", options: .regularExpression)
        let dir = "/sys/fs/cgroup/net_cls/netshape/\(s.client)"
        if let classes = try? FileManager.default.contentsOfDirectory(atPath: dir) {
            for c in classes.sorted() {
                let id = (try? String(contentsOfFile: "\(dir)/\(c)/net_cls.classid", encoding: .utf8)) ?? "-"
                out += "cgroup \(c) \(id)"
            }
        }
        if let d = stateDir { out += (try? String(contentsOfFile: "\(d)/ownership.json", encoding: .utf8)) ?? "{}" }
        return out
    }

    /// The kernel keeps a burst as a transmit time in 64 ns ticks: a class restored by a rollback
    /// reads back its burst a few bytes off (65536 → 65520), the same configuration within tc's
    /// rounding. netshape's own comparison allows for it; this text comparison drops the figures.
    /// Leaf qdisc handles are the kernel's choice, too: a leaf rebuilt by a rollback gets a new one
    /// (and so another place in tc's listing).
    func withoutBursts(_ text: String) -> String {
        text.replacingOccurrences(of: #"c?burst \S+"#, with: "", options: .regularExpression)
            .replacingOccurrences(of: #"(qdisc \w+ |leaf )[0-9a-f]+:"#, with: "$1auto:", options: .regularExpression)
            .split(separator: "\n").sorted().joined(separator: "\n")  // tc lists leaves in handle order
    }

    func privateState(_ s: Scratch) -> [String: String] {
        let dir = s.dir.appendingPathComponent("state").path
        return ["NETSHAPE_STATE_DIR": dir]
    }

    @Test func changingTheEgressConverges() throws {
        let s = try Scratch()
        defer { s.close() }
        let policy = try s.policy(Self.capped)
        #expect(try cli("apply", policy).status == 0)
        _ = try s.policy(Self.capped.replacingOccurrences(of: "egress = \"100mbit\"", with: "egress = \"200mbit\""))
        let r = try cli("apply", policy)
        #expect(r.status == 0, "\(r.err)")
        #expect(try s.classes().values.contains { $0.rate == 200e6 })
        let plan = try cli("plan", "--json", policy)
        #expect(
            plan.out.contains("\"operations\" : [\n\n  ]") || plan.out.contains("\"operations\" : []"), "\(plan.out)")
    }

    /// The BPF side of a scratch pair: the sock_create program's attachment and the map's rules for
    /// the client namespace (by its cookie), for the random walk's snapshot. The cgroup2
    /// classifier's program and map hang off the filter, which `snapshot()` lists.
    func bpfSnapshot(_ s: Scratch) throws -> String {
        guard Capability.kernel?.sockCreate == true else { return "no sock_create hook" }
        let cookie = try SockCreateInspection.cookie(of: .named(s.client))
        let now = try SockCreateInspection.current()
        let mine = now.entries.filter { $0.key.cookie == cookie }.sorted { $0.key < $1.key }
        // Attached or not is host-wide: another state directory's rules keep it (as reset does).
        let others = now.entries.contains { $0.key.cookie != cookie }
        return "sock_create attached \(now.attached) (others' rules \(others)), rules \(mine)"
    }

    /// Dozens of random edits on the real kernel: every apply exits 0, the plan after it is empty,
    /// and reset gives back the machine as it was before the first apply, BPF programs and maps
    /// included. The edits include `cgroup` rules (classes classified by cgroup v2 path, over
    /// directories of the walk's own, one of which comes and goes) and `comm` rules (sock_create).
    @Test func aRandomWalkOfEditsConvergesOnTheRealKernel() throws {
        let seed = UInt64.random(in: 1...UInt64(UInt32.max))
        print("random walk: seed \(seed)")
        var rng = SeededRandom(seed: seed)
        let s = try Scratch()
        defer { s.close() }
        // The walk's cgroup v2 directories, under its own parent, removed even when a step fails;
        // none ever holds a process, so rules on them move nothing.
        let cg = Capability.kernel?.cgroup2 == true ? try Cgroup2Scratch(id: "walk-\(s.id)") : nil
        defer { cg?.remove() }
        for d in ["p0", "p1", "p1/q"] { try cg?.make(d) }
        let pristine = try fullSnapshot(s) + bpfSnapshot(s)
        var edits: [String] = []
        var model = WalkModel()
        if let cg {
            // "late" appears and goes during the walk; "absent" never exists.
            model.cgroupPaths = ["p0", "p1", "p1/q", "late", "absent"].map { "\(cg.name)/\($0)" }
            model.classes.append(.init(name: "g0", rate: 5, cgroup: [model.cgroupPaths[0]]))
        }
        // Both kinds of rule from the first apply on, whatever the edits draw.
        model.classes.append(.init(name: "k0", rate: 5, comm: ["nswalk-a"]))
        model.normalize()
        var policy = ""
        var programs = Set<UInt32>()
        // Step 0 applies the model as made, so both kinds of rule are on the machine at least once.
        for step in 0..<33 {
            let edit = step == 0 ? "initial" : model.edit(&rng)
            edits.append(edit)
            if edit == "toggle late", let cg {
                if cg.id("late") == nil { try cg.make("late") } else { cg.remove("late") }
            }
            policy = try s.policy(model.body)
            let r = try cli("apply", policy)
            guard r.status == 0 else {
                Issue.record(
                    "step \(step) apply exited \(r.status): \(r.err)\nseed \(seed), edits \(edits)\n\(model.body)")
                return
            }
            let plan = try cli("plan", "--json", policy)
            guard plan.out.range(of: #""operations" : \[\s*\]"#, options: .regularExpression) != nil else {
                Issue.record(
                    "step \(step): plan after apply is not empty:\n\(plan.out)\nseed \(seed), edits \(edits)\n\(model.body)"
                )
                return
            }
            // The cgroup2 classifier's program, by the id tc prints for the filter: reset must free it.
            let filters = try must([tc, "-n", s.client, "filter", "show", "dev", s.dev])
            for m in filters.matches(of: /\bid (\d+)/) { if let id = UInt32(m.1) { programs.insert(id) } }
            if step == 0 {
                // The walk must reach what it is about: the path classifier and sock_create rules.
                #expect(cg == nil || !programs.isEmpty, "no cgroup2 classifier after the first apply:\n\(filters)")
                let bpf = try bpfSnapshot(s)
                #expect(!bpf.hasSuffix("rules []"), "no sock_create rules for the namespace: \(bpf)")
            }
        }
        #expect(try cli("reset", policy).status == 0, "seed \(seed)")
        var after = ""
        // A program and its map are freed after an RCU grace period, not with the filter's removal.
        for _ in 0..<30 {
            after = try fullSnapshot(s) + bpfSnapshot(s)
            if after == pristine && !programs.contains(where: Cgroup2Probe.programExists) { break }
            usleep(100_000)
        }
        #expect(after == pristine, "seed \(seed), edits \(edits)")
        let left = programs.filter(Cgroup2Probe.programExists)
        #expect(left.isEmpty, "programs \(left.sorted()) outlive reset; seed \(seed), edits \(edits)")
    }

    /// A fault at every operation index of an apply (NETSHAPE_FAIL_OPERATION): each leaves the machine
    /// as it was, and the next apply converges; SIGKILL in the middle of an apply, then apply: converged.
    @Test func aFaultAtEveryOperationLeavesTheMachineAsItWas() throws {
        let s = try Scratch()
        defer { s.close() }
        let env = privateState(s)
        let policy = try s.policy(Self.capped)
        #expect(try cli(env: env, "apply", policy).status == 0)
        let before = try fullSnapshot(s, stateDir: env["NETSHAPE_STATE_DIR"])
        // The edit: change one class, rename one, add one, add ingress (same file, same path).
        let edited =
            "ingress = \"30mbit\"\n"
            + Self.capped.replacingOccurrences(of: "rate = \"40mbit\"\nceil = \"40mbit\"", with: "rate = \"30mbit\"")
            .replacingOccurrences(of: "name = \"slow\"", with: "name = \"slower\"")
            + "\n[[namespace.class]]\nname = \"extra\"\nrate = \"5mbit\"\n"
        _ = try s.policy(edited)
        let count = try cli(env: env, "plan", "--json", policy).out.components(separatedBy: "\"command\"").count - 1
        #expect(count >= 8, "the edit has several operations (\(count))")
        for index in 1...count {
            let r = try cli(env: env.merging(["NETSHAPE_FAIL_OPERATION": "\(index)"]) { $1 }, "apply", policy)
            #expect(r.status == 1, "operation \(index): \(r.err)")
            #expect(r.err.contains("injected failure"), "operation \(index): \(r.err)")
            let after = try fullSnapshot(s, stateDir: env["NETSHAPE_STATE_DIR"])
            #expect(
                withoutBursts(after) == withoutBursts(before), "operation \(index) of \(count) left the machine changed"
            )
        }
        let good = try cli(env: env, "apply", policy)
        #expect(good.status == 0, "\(good.err)")
        // SIGKILL at random points of an apply that rebuilds from scratch, then apply again.
        for _ in 0..<4 {
            #expect(try cli(env: env, "reset", policy).status == 0)
            let p = Process()
            p.executableURL = URL(fileURLWithPath: netshapeBinary)
            p.arguments = ["apply", policy]
            p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            usleep(useconds_t.random(in: 2_000...40_000))
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            let again = try cli(env: env, "apply", policy)
            #expect(again.status == 0, "after SIGKILL: \(again.err)")
            let plan = try cli(env: env, "plan", "--json", policy)
            #expect(plan.out.range(of: #""operations" : \[\s*\]"#, options: .regularExpression) != nil, "\(plan.out)")
        }
    }

    @Test func aSecondPolicyWithTheSameNameIsRefusedAndChangesNothing() throws {
        let s = try Scratch()
        defer { s.close() }
        let one = try s.policy(name: "one", Self.capped)
        #expect(try cli("apply", one).status == 0)
        let before = try fullSnapshot(s)
        let two = try s.policy(name: "two", "egress = \"50mbit\"")
        let r = try cli("apply", two)
        #expect(r.status == 1)
        #expect(r.err.contains(one), "names the other policy: \(r.err)")
        #expect(try fullSnapshot(s) == before)
        #expect(try cli("reset", two).out.contains("nothing to remove"), "the refused policy owns nothing")
        #expect(try fullSnapshot(s) == before, "resetting it removes nothing of the first")
    }

    @Test func aLostPolicyFileIsShownAsOrphanedAndStillReset() throws {
        let s = try Scratch()
        defer { s.close() }
        let env = privateState(s)
        let pristine = try fullSnapshot(s)
        let policy = try s.policy(Self.capped)
        #expect(try cli(env: env, "apply", policy).status == 0)
        try FileManager.default.removeItem(atPath: policy)
        let status = try cli(env: env, "status", "--interval", "0")
        #expect(status.status == 0, "\(status.err)")
        #expect(status.out.contains("ORPHANED") && status.out.contains("netshape reset \(policy)"), "\(status.out)")
        let reset = try cli(env: env, "reset", policy)
        #expect(reset.status == 0, "\(reset.err)")
        #expect(try fullSnapshot(s) == pristine)
        #expect(try cli(env: env, "status").out.contains("no policy"))
        // A lost record (tmpfs wiped, a crash before it was written): apply adopts the tree it finds
        // with netshape's handle and filter, reset removes it.
        let again = try s.policy(Self.capped)
        #expect(try cli(env: env, "apply", again).status == 0)
        try FileManager.default.removeItem(atPath: "\(env["NETSHAPE_STATE_DIR"] ?? "")/ownership.json")
        let adopted = try cli(env: env, "apply", again)
        #expect(adopted.status == 0 && adopted.out.contains("no changes"), "adopted, not rebuilt: \(adopted.out)")
        try FileManager.default.removeItem(atPath: "\(env["NETSHAPE_STATE_DIR"] ?? "")/ownership.json")
        let resetLost = try cli(env: env, "reset", again)
        #expect(resetLost.status == 0, "\(resetLost.err)")
        #expect(try fullSnapshot(s) == pristine, "reset removed the tree whose record was lost")
    }

    @Test func resetAllRemovesEveryRecordedPolicyAndNothingElse() throws {
        let a = try Scratch()
        defer { a.close() }
        let b = try Scratch()
        defer { b.close() }
        let env = privateState(a)
        let pristineA = try fullSnapshot(a)
        let pristineB = try fullSnapshot(b)
        #expect(try cli(env: env, "apply", try a.policy(Self.capped)).status == 0)
        #expect(try cli(env: env, "apply", try b.policy("egress = \"30mbit\"\ningress = \"20mbit\"")).status == 0)
        // A qdisc netshape did not make, beside its trees: reset --all must leave it.
        try must([tc, "-n", a.server, "qdisc", "add", "dev", a.serverDev, "root", "handle", "9:", "htb"])
        let r = try cli(env: env, "reset", "--all")
        #expect(r.status == 0, "\(r.err)")
        #expect(try fullSnapshot(b) == pristineB)
        let afterA = try fullSnapshot(a)
        #expect(afterA.contains("qdisc htb 9:"), "the foreign qdisc stays")
        try must([tc, "-n", a.server, "qdisc", "del", "dev", a.serverDev, "root"])
        #expect(try fullSnapshot(a) == pristineA)
    }

    @Test func foreignCgroupsAndClassesInsideNetshapesOwnAreLeftAlone() throws {
        let s = try Scratch()
        defer { s.close() }
        let policy = try s.policy(Self.capped)
        #expect(try cli("apply", policy).status == 0)
        let dir = "/sys/fs/cgroup/net_cls/netshape/\(s.client)"
        try FileManager.default.createDirectory(atPath: "\(dir)/mine", withIntermediateDirectories: false)
        try FileManager.default.createDirectory(atPath: "\(dir)/slow/nested", withIntermediateDirectories: false)
        defer {
            try? FileManager.default.removeItem(atPath: "\(dir)/slow/nested")
            try? FileManager.default.removeItem(atPath: "\(dir)/mine")
        }
        let sleeper = try background(in: s.client, ["/bin/sleep", "60"])
        defer { sleeper.stopNow() }
        // `ip netns exec` execs the command: the process is the sleep itself.
        let pid = "\(sleeper.processIdentifier)"
        try pid.write(toFile: "\(dir)/mine/cgroup.procs", atomically: false, encoding: .utf8)
        let root = try must([tc, "-n", s.client, "qdisc", "show", "dev", s.dev, "root"])
        let major = String(root.split(separator: " ")[2].dropLast())
        try must([
            tc, "-n", s.client, "class", "add", "dev", s.dev, "parent", "\(major):1", "classid", "\(major):99", "htb",
            "rate", "1mbit",
        ])
        // Rename "fast": its cgroup goes, the foreign ones stay, and so does the foreign class.
        _ = try s.policy(Self.capped.replacingOccurrences(of: "name = \"fast\"", with: "name = \"quick\""))
        let r = try cli("apply", policy)
        #expect(r.status == 0, "\(r.err)")
        #expect(
            r.out.contains("\(dir.dropFirst("/sys/fs/cgroup/net_cls/".count))/mine") && r.out.contains("\(major):99"),
            "\(r.out)")
        let members = try String(contentsOfFile: "\(dir)/mine/cgroup.procs", encoding: .utf8)
        #expect(members.contains(pid), "the foreign cgroup keeps its process")
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/fast"))
        // reset removes the rest, names what it had to leave, and exits 1 saying "reset".
        let reset = try cli("reset", policy)
        #expect(reset.status == 1)
        #expect(reset.err.contains("reset failed") && reset.err.contains("slow"), "\(reset.err)")
        #expect(reset.err.contains("\(major):99"), "the foreign class keeps the tree, named: \(reset.err)")
        #expect(try rootQdisc(s).contains("htb"), "the tree holding the foreign class stays")
        try must([tc, "-n", s.client, "class", "del", "dev", s.dev, "classid", "\(major):99"])
        #expect(reset.err.contains("mine"), "names the foreign cgroup it left: \(reset.err)")
        #expect(FileManager.default.fileExists(atPath: "\(dir)/mine"))
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/rest"))
        sleeper.stopNow()
        try FileManager.default.removeItem(atPath: "\(dir)/slow/nested")
        try FileManager.default.removeItem(atPath: "\(dir)/mine")
        #expect(try cli("reset", policy).status == 0)
        #expect(!FileManager.default.fileExists(atPath: dir))
    }

    @Test func theDaemonFollowsANamespaceThatIsDeletedAndMadeAgain() throws {
        let s = try Scratch()
        defer { s.close() }
        let policy = try s.policy("egress = \"20mbit\"")
        let d = try DaemonProcess(policy: policy, dir: s.dir, interval: 30)
        defer { _ = d.stop() }
        try waitFor(seconds: 5, "the first tree") { (try? self.rootQdisc(s).contains("htb")) == true }
        let old = try FileManager.default.attributesOfItem(atPath: "/run/netns/\(s.client)")[.systemFileNumber]
        try s.recreateClient()
        // inotify on /run/netns wakes the daemon: no need to wait for the 30 s interval.
        try waitFor(seconds: 8, "the new namespace to be shaped") {
            (try? self.rootQdisc(s).contains("htb")) == true
        }
        // The daemon no longer holds the old namespace open.
        let fds =
            (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(d.process.processIdentifier)/fd")) ?? []
        let links = fds.compactMap {
            try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(d.process.processIdentifier)/fd/\($0)")
        }
        #expect(!links.contains("net:[\(old.map { "\($0)" } ?? "?")]"), "\(links)")
        #expect(!d.text.contains("No such device"), "\(d.text.suffix(800))")
    }
}

/// A namespace body edited at random: egress, ingress, classes added, removed, renamed and tuned.
struct WalkModel {
    struct Class {
        var name: String
        var rate: Int
        var ceil: Int?
        var priority: Int?
        var leaf: String?
        /// `match.cgroup`: alone, a class classified by cgroup v2 path; with `comm`, a net_cls one.
        var cgroup: [String]?
        /// `match.comm`: names no process has, so the sock_create map gets rules and nothing moves.
        var comm: [String]?
        var hasRules: Bool { cgroup != nil || comm != nil }
    }
    var egress = 100
    var ingress: Int?
    var classes: [Class] = [Class(name: "c0", rate: 10)]
    var defaultClass: String?
    var next = 1
    /// The cgroup v2 paths `cgroup` rules pick from (empty: the kernel cannot classify by path,
    /// and the walk makes no cgroup rule).
    var cgroupPaths: [String] = []

    var body: String {
        var out = "egress = \"\(egress)mbit\"\n"
        if let i = ingress { out += "ingress = \"\(i)mbit\"\n" }
        if let d = defaultClass { out += "default = \"\(d)\"\n" }
        for c in classes {
            out += "[[namespace.class]]\nname = \"\(c.name)\"\nrate = \"\(c.rate)mbit\"\n"
            if let v = c.ceil { out += "ceil = \"\(v)mbit\"\n" }
            if let v = c.priority { out += "priority = \(v)\n" }
            if let v = c.leaf { out += "leaf = \"\(v)\"\n" }
            if let v = c.cgroup { out += "match.cgroup = [" + v.map { "\"\($0)\"" }.joined(separator: ", ") + "]\n" }
            if let v = c.comm { out += "match.comm = [" + v.map { "\"\($0)\"" }.joined(separator: ", ") + "]\n" }
        }
        return out
    }

    mutating func edit(_ r: inout SeededRandom) -> String {
        defer { normalize() }
        let j = classes.isEmpty ? nil : Int.random(in: 0..<classes.count, using: &r)
        switch (Int.random(in: 0..<12, using: &r), j) {
        case (8, let j?) where !cgroupPaths.isEmpty:
            // One or two paths, sometimes one inside the other (the later one is shadowed).
            let n = Int.random(in: 0...2, using: &r)
            let picked = Array(cgroupPaths.shuffled(using: &r).prefix(n))
            classes[j].cgroup = picked.isEmpty ? nil : picked
            return "cgroup \(classes[j].name) \(picked.map { $0.split(separator: "/").last ?? "" })"
        case (9, let j?):
            let picked = ["nswalk-a", "nswalk-b"].filter { _ in Bool.random(using: &r) }
            classes[j].comm = picked.isEmpty ? nil : picked
            return "comm \(classes[j].name) \(picked)"
        case (10, _) where cgroupPaths.contains { $0.hasSuffix("/late") }:
            return "toggle late"
        case (0, _):
            egress = Int.random(in: 20...1000, using: &r)
            return "egress \(egress)"
        case (1, _):
            ingress = Bool.random(using: &r) ? Int.random(in: 5...500, using: &r) : nil
            return "ingress \(String(describing: ingress))"
        case (2, _) where classes.count < 6:
            classes.append(Class(name: "c\(next)", rate: Int.random(in: 1...20, using: &r)))
            next += 1
            return "add class"
        case (3, let j?):
            return "remove \(classes.remove(at: j).name)"
        case (4, let j?):
            classes[j].name = "c\(next)"
            next += 1
            return "rename to \(classes[j].name)"
        case (5, let j?):
            classes[j].rate = Int.random(in: 1...40, using: &r)
            classes[j].ceil = Bool.random(using: &r) ? Int.random(in: 1...1000, using: &r) : nil
            return "\(classes[j].name) rate/ceil"
        case (6, let j?):
            classes[j].priority = Int.random(in: 0...7, using: &r)
            return "\(classes[j].name) priority"
        case (7, let j?):
            classes[j].leaf = ["bfifo", "pfifo", nil].randomElement(using: &r) ?? nil
            return "\(classes[j].name) leaf"
        default:
            defaultClass = Bool.random(using: &r) ? classes.randomElement(using: &r)?.name : nil
            return "default \(String(describing: defaultClass))"
        }
    }

    mutating func normalize() {
        let share = max(1, egress / (classes.count + 1))
        for i in classes.indices {
            classes[i].rate = min(classes[i].rate, share)
            if let c = classes[i].ceil { classes[i].ceil = min(max(c, classes[i].rate), egress) }
        }
        if let d = defaultClass, !classes.contains(where: { $0.name == d }) { defaultClass = nil }
        // The parser wants a `default` beside match rules: a class without rules when there is one.
        if defaultClass == nil, classes.contains(where: \.hasRules) {
            defaultClass = (classes.first { !$0.hasRules } ?? classes[0]).name
        }
    }
}
