import Foundation
import Testing

/// netshape as a user runs it: the real binary, as root, on a throwaway pair of namespaces.
/// Serialized: the throughput and latency measurements must not share the two cores with each other.
@Suite(.serialized, .requiresNetAdmin)
struct ApplyIntegrationTests {
    /// Two capped classes and a capped default class, each with ceil = rate so none can borrow.
    static let capped = """
        egress = "100mbit"
        default = "rest"
        [[namespace.class]]
        name = "slow"
        rate = "10mbit"
        ceil = "10mbit"
        [[namespace.class]]
        name = "fast"
        rate = "40mbit"
        ceil = "40mbit"
        [[namespace.class]]
        name = "rest"
        rate = "20mbit"
        ceil = "20mbit"
        """

    @Test func applyBuildsTheTreeAndIsIdempotent() throws {
        let s = try Scratch()
        defer { s.close() }
        let policy = try s.policy(Self.capped)
        let first = try cli("apply", policy)
        #expect(first.status == 0, "\(first.err)")
        let classes = try s.classes()
        #expect(classes.count == 4, "root + 3 leaves: \(classes.keys.sorted())")
        let rates = classes.values.map(\.rate).sorted()
        #expect(rates == [10e6, 20e6, 40e6, 100e6], "tc reports the policy's rates: \(rates)")
        let filters = try must([tc, "-n", s.client, "filter", "show", "dev", s.dev])
        #expect(filters.contains("bpf") || filters.contains("cgroup"), "\(filters)")
        for c in ["slow", "fast", "rest"] {
            let path = "/sys/fs/cgroup/net_cls/netshape/\(s.client)/\(c)/net_cls.classid"
            let id = try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(UInt32(id).map { $0 != 0 } == true, "\(c) has a classid")
        }
        let second = try cli("apply", policy)
        #expect(second.status == 0)
        #expect(second.out.contains("no changes"), "\(second.out)")
        let plan = try cli("plan", policy, "--json")
        let obj = try JSONSerialization.jsonObject(with: Data(plan.out.utf8)) as? [String: Any]
        #expect((obj?["operations"] as? [Any])?.isEmpty == true, "plan --json is empty after apply")
    }

    @Test(.requiresIperf3) func eachClassGetsItsRate() throws {
        let s = try Scratch()
        defer { s.close() }
        let policy = try s.policy(Self.capped)
        try #require(try cli("apply", policy).status == 0)
        let measured = try shapedGoodputs([10e6, 40e6, 20e6], "three classes") {
            for port in [5301, 5302, 5303] { try s.iperfServer(port: port) }
            let results = try concurrently([
                [netshapeBinary, "run", policy, "slow", "--"] + s.iperfClient(port: 5301, seconds: 4),
                [netshapeBinary, "run", policy, "fast", "--"] + s.iperfClient(port: 5302, seconds: 4),
                [ip, "netns", "exec", s.client] + s.iperfClient(port: 5303, seconds: 4),
            ])
            return try results.map { try goodput($0.out) }
        }
        print(
            "goodput slow \(mbit(measured[0])) (10), fast \(mbit(measured[1])) (40), rest/default \(mbit(measured[2])) (20)"
        )
        // TCP goodput is ≈ 95 % of the shaped wire rate (see shapedAt).
        for (bps, want) in zip(measured, [10e6, 40e6, 20e6]) {
            #expect(shapedAt(bps, want), "\(mbit(bps)) for a \(mbit(want)) class")
        }
        let status = try cli("status", policy, "--json", "--interval", "0")
        let obj = try JSONSerialization.jsonObject(with: Data(status.out.utf8)) as? [String: Any]
        let nss = obj?["namespaces"] as? [[String: Any]]
        let classes = nss?.first?["classes"] as? [[String: Any]] ?? []
        #expect(classes.count == 3)
        for c in classes { #expect((c["bytes"] as? Int ?? 0) > 1_000_000, "\(c["name"] ?? "?") counted its traffic") }
    }

    @Test(.requiresIperf3) func aProcessAlreadySendingIsSlowedByApply() throws {
        let s = try Scratch()
        defer { s.close() }
        // First only a fast default class; then a rule that picks the running iperf3 by pid.
        let open = try s.policy(name: "open", "egress = \"200mbit\"")
        try #require(try cli("apply", open).status == 0)
        try s.iperfServer(port: 5310)
        let client = Process()
        client.executableURL = URL(fileURLWithPath: ip)
        // 10 s: 3 unshaped, the apply, 1.5 to settle and 2 measured, with room for a slow apply.
        client.arguments = ["netns", "exec", s.client] + s.iperfClient(port: 5310, seconds: 10)
        let out = Pipe()
        client.standardOutput = out
        try client.run()
        let started = Date()
        sleep(3)
        let limited = try s.policy(
            name: "open",
            """
            egress = "200mbit"
            default = "rest"
            [[namespace.class]]
            name = "capped"
            rate = "10mbit"
            ceil = "10mbit"
            match.pid = [\(client.processIdentifier)]
            [[namespace.class]]
            name = "rest"
            rate = "100mbit"
            """)
        let applied = try cli("apply", limited)
        #expect(applied.status == 0, "\(applied.err)")
        #expect(applied.out.contains("echo \(client.processIdentifier) >"), "\(applied.out)")
        // The capped class's own counter over two seconds while the process keeps sending: the
        // wire rate through the class, not iperf3's sender-side estimate.
        usleep(1_500_000)
        let classid = try #require(
            try String(
                contentsOfFile: "/sys/fs/cgroup/net_cls/netshape/\(s.client)/capped/net_cls.classid",
                encoding: .utf8
            ).trimmingCharacters(in: .whitespacesAndNewlines))
        let handle = try #require(UInt32(classid)).classidString
        // Each read is timed at the middle of its `tc` run: the window is what elapsed between the
        // two dumps, not the 2 s slept (a `tc` start is slow on a loaded machine).
        func counter() throws -> (bytes: Int, at: Date) {
            let t0 = Date()
            let b = try #require(try s.classes()[handle]?.bytes)
            return (b, t0.addingTimeInterval(Date().timeIntervalSince(t0) / 2))
        }
        let c0 = try counter()
        usleep(2_000_000)
        let c1 = try counter()
        let sending = Date().timeIntervalSince(started)
        let json = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        client.waitUntilExit()
        let perSecond = try intervals(json)
        let window = c1.at.timeIntervalSince(c0.at)
        let wire = Double(c1.bytes - c0.bytes) * 8 / window
        print(
            "before apply: \(perSecond.prefix(3).map(mbit)); after, through the class: \(mbit(wire)) over "
                + String(format: "%.2f s, read %.1f s after the client started", window, sending))
        // The window must lie inside the client's 10 s, or the figure says nothing about shaping.
        try #require(sending < 9.5, "the apply took so long that the client stopped before the second read")
        try #require(perSecond.count >= 3)
        #expect(perSecond[1] > 50e6, "unshaped before: \(mbit(perSecond[1]))")
        #expect(wire > 9e6 && wire < 11e6, "after apply the running process is shaped by its class: \(mbit(wire))")
    }

    @Test(.requiresIperf3) func reapplyAndRateEditsKeepCountersCounting() throws {
        let s = try Scratch()
        defer { s.close() }
        let policy = try s.policy(Self.capped)
        try #require(try cli("apply", policy).status == 0)
        try s.iperfServer(port: 5320)
        _ = try must([ip, "netns", "exec", s.client] + s.iperfClient(port: 5320, seconds: 2))
        let before = try s.classes()
        func bytes(_ c: [String: Scratch.TCClass]) -> [String: Int] { c.mapValues(\.bytes) }
        let reapply = try cli("apply", policy)
        #expect(reapply.out.contains("no changes"))
        // Counters only grow (background traffic such as IPv6 neighbour discovery may add a few
        // bytes); a re-created class would start again from zero.
        func kept(_ now: [String: Scratch.TCClass]) -> Bool {
            before.allSatisfy { id, c in (now[id]?.bytes ?? -1) >= c.bytes }
                && (before.values.map(\.bytes).max() ?? 0) > 1_000_000
        }
        #expect(kept(try s.classes()), "a no-op apply re-creates nothing")

        let edited = try s.policy(
            Self.capped.replacingOccurrences(
                of: "rate = \"40mbit\"\nceil = \"40mbit\"",
                with: "rate = \"30mbit\"\nceil = \"30mbit\""))
        let change = try cli("apply", edited)
        #expect(change.status == 0)
        let lines = change.out.split(separator: "\n").filter {
            $0.hasPrefix("~") || $0.hasPrefix("+") || $0.hasPrefix("-")
        }
        #expect(lines.count == 1 && lines[0].contains("tc class change"), "exactly one in-place change: \(lines)")
        let after = try s.classes()
        #expect(kept(after), "every counter kept its value: \(bytes(after)) vs \(bytes(before))")
        #expect(after.values.contains { $0.rate == 30e6 && $0.ceil == 30e6 }, "tc shows the new 30mbit class")
        #expect(!after.values.contains { $0.rate == 40e6 })
    }

    @Test func resetRestoresThePriorStateAndKeepsForeignObjects() throws {
        let s = try Scratch()
        defer { s.close() }
        // Someone else's objects: an ingress qdisc on the shaped device and a root qdisc on lo.
        try must([tc, "-n", s.client, "qdisc", "add", "dev", s.dev, "ingress"])
        try must([tc, "-n", s.client, "qdisc", "add", "dev", "lo", "root", "handle", "7:", "htb"])
        let before = try s.snapshot()
        let policy = try s.policy(Self.capped)
        try #require(try cli("apply", policy).status == 0)
        #expect(try s.snapshot() != before)
        let reset = try cli("reset", policy)
        #expect(reset.status == 0, "\(reset.err)")
        #expect(try s.snapshot() == before)
        #expect(try cli("reset", policy).out.contains("nothing to remove"))
    }

    @Test func aForeignRootQdiscIsRefusedAndNothingChanges() throws {
        let s = try Scratch()
        defer { s.close() }
        try must([
            tc, "-n", s.client, "qdisc", "add", "dev", s.dev, "root", "handle", "1:", "tbf", "rate", "1mbit",
            "burst", "32kb", "latency", "50ms",
        ])
        let before = try s.snapshot()
        let policy = try s.policy(Self.capped)
        let refused = try cli("apply", policy)
        #expect(refused.status == 1)
        #expect(
            refused.err.contains("netshape: error:") && refused.err.contains("tbf") && refused.err.contains("--force"),
            "\(refused.err)")
        #expect(try s.snapshot() == before)
        let forced = try cli("apply", "--force", policy)
        #expect(forced.status == 0, "\(forced.err)")
        #expect(try must([tc, "-n", s.client, "qdisc", "show", "dev", s.dev]).contains("htb"))
    }

    @Test func rejectedPoliciesChangeNothing() throws {
        let s = try Scratch()
        defer { s.close() }
        let good = try s.policy(Self.capped)
        try #require(try cli("apply", good).status == 0)
        let before = try s.snapshot()
        let cases: [(String, Int32, String)] = [
            (Self.capped.replacingOccurrences(of: "\"40mbit\"\nceil", with: "\"400mbit\"\nceil"), 65, ":"),
            (
                Self.capped.replacingOccurrences(of: "default = \"rest\"", with: "default = \"nope\""), 65,
                "names no class"
            ),
            (Self.capped + "\nbogus = 1", 65, "unknown key"),
        ]
        for (body, code, text) in cases {
            let bad = try s.policy(name: "bad", body)
            let r = try cli("apply", bad)
            #expect(r.status == code, "\(r.err)")
            #expect(r.err.contains(text), "\(r.err)")
            #expect(r.err.contains("bad.toml:"), "errors name FILE:LINE:COL: \(r.err)")
            #expect(try s.snapshot() == before)
        }
        // A policy a non-root user could have rewritten is refused before anything is read.
        let writable = try s.policy(name: "writable", Self.capped)
        try FileManager.default.setAttributes([.posixPermissions: 0o666], ofItemAtPath: writable)
        let r = try cli("apply", writable)
        #expect(r.status == 1 && r.err.contains("writable by group or others"), "\(r.err)")
        #expect(try s.snapshot() == before)
        // The applied policy edited to a device that does not exist. (Another file naming the same
        // namespace is refused earlier: that name belongs to the applied policy.)
        let original = try String(contentsOfFile: good, encoding: .utf8)
        try original.replacingOccurrences(of: "device = \"veth0\"", with: "device = \"nosuch0\"").write(
            toFile: good, atomically: true, encoding: .utf8)
        let missing = try cli("apply", good)
        #expect(missing.status == 1 && missing.err.contains("nosuch0"), "\(missing.err)")
        #expect(try s.snapshot() == before)
        let other = try s.policy(name: "other", Self.capped)
        let claimed = try cli("apply", other)
        #expect(claimed.status == 1 && claimed.err.contains(good), "\(claimed.err)")
        #expect(try s.snapshot() == before)
        try original.write(toFile: good, atomically: true, encoding: .utf8)
    }

    @Test func aFailureHalfWayRollsBack() throws {
        let s = try Scratch()
        defer { s.close() }
        let before = try s.snapshot()
        // The tc tree is built first; then the cgroup step fails (the net_cls root cannot be
        // created under /proc), half-way through the run.
        let policy = try s.policy(Self.capped, settings: "[settings]\ncgroup_root = \"/proc/netshape-no-such-dir\"")
        let r = try cli("apply", policy)
        #expect(r.status == 1)
        #expect(r.err.contains("apply failed") && r.err.contains("rolled back"), "\(r.err)")
        #expect(r.err.contains("/proc/netshape-no-such-dir"), "the error names the object: \(r.err)")
        #expect(try s.snapshot() == before, "the tc tree built before the failure is gone")
        let owned = (try? String(contentsOfFile: "/run/netshape/ownership.json", encoding: .utf8)) ?? ""
        #expect(!owned.contains(s.client), "ownership restored")
    }

    @Test(.requiresIperf3) func aHighPriorityClassKeepsLowLatencyUnderLoad() throws {
        let s = try Scratch()
        defer { s.close() }
        let policy = try s.policy(
            """
            egress = "20mbit"
            default = "bulk"
            [[namespace.class]]
            name = "interactive"
            rate = "2mbit"
            priority = 0
            [[namespace.class]]
            name = "bulk"
            rate = "18mbit"
            priority = 7
            """)
        try #require(try cli("apply", policy).status == 0)
        try s.iperfServer(port: 5330)
        let results = try concurrently([
            [ip, "netns", "exec", s.client] + s.iperfClient(port: 5330, seconds: 6, extra: ["-P", "4"]),
            [
                "/bin/sh", "-c",
                "sleep 2; exec \(netshapeBinary) run \(policy) interactive -- \(ping) -q -c 15 -i 0.2 \(s.serverIP)",
            ],
            ["/bin/sh", "-c", "sleep 2; exec \(ip) netns exec \(s.client) \(ping) -q -c 15 -i 0.2 \(s.serverIP)"],
        ])
        func avgRTT(_ out: String) -> Double? {
            // "rtt min/avg/max/mdev = 0.031/0.045/0.070/0.010 ms"
            guard let line = out.split(separator: "\n").first(where: { $0.contains("min/avg/max") }) else { return nil }
            let nums = line.split(separator: "=")[1].split(separator: "/")
            return Double(nums[1].trimmingCharacters(in: .whitespaces))
        }
        let interactive = try #require(avgRTT(results[1].out), "\(results[1].out + results[1].err)")
        let bulk = try #require(avgRTT(results[2].out), "\(results[2].out + results[2].err)")
        print("RTT under load: interactive class \(interactive) ms, bulk class \(bulk) ms")
        #expect(interactive < 5, "the interactive class's queue stays empty")
        #expect(bulk > interactive * 3, "the bulk class queues (its bfifo/fq_codel holds the backlog)")
    }

    @Test func withoutRootTheErrorSaysSo() throws {
        let s = try Scratch()
        defer { s.close() }
        let policy = try s.policy(Self.capped)
        // A policy the unprivileged user owns, in a directory only it can write.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("netshape-nobody-\(s.id)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let mine = dir.appendingPathComponent("p.toml").path
        try FileManager.default.copyItem(atPath: policy, toPath: mine)
        try must(["/bin/chown", "-R", "nobody:nogroup", dir.path])
        try must(["/bin/chmod", "700", dir.path])
        let r = try run([
            "/usr/bin/setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", netshapeBinary, "plan", mine,
        ])
        #expect(r.status == 1, "\(r.err)")
        #expect(r.err.contains("run it as root"), "\(r.err)")
    }

    @Test func classifyAndRunPlaceProcessesAndRefuseOtherNamespaces() throws {
        let s = try Scratch()
        defer { s.close() }
        let policy = try s.policy(Self.capped)
        try #require(try cli("apply", policy).status == 0)
        // A process in the client namespace.
        let sleeper = try background(in: s.client, ["/bin/sleep", "30"])
        defer { sleeper.stopNow() }
        let pid = sleeper.processIdentifier
        let moved = try cli("classify", policy, "\(s.client)/slow", String(pid))
        #expect(moved.status == 0, "\(moved.err)")
        let procs = try String(
            contentsOfFile: "/sys/fs/cgroup/net_cls/netshape/\(s.client)/slow/cgroup.procs", encoding: .utf8)
        #expect(procs.split(separator: "\n").contains(Substring(String(pid))))
        // This test process lives in the host namespace: refused, nothing moved.
        let refused = try cli("classify", policy, "slow", String(getpid()))
        #expect(refused.status == 1 && refused.err.contains("another network namespace"), "\(refused.err)")
        // run: the command is in the class's cgroup and namespace from its first instruction.
        let inside = try cli(
            "run", policy, "fast", "--", "/bin/sh", "-c", "cat /proc/self/cgroup; readlink /proc/self/ns/net")
        #expect(inside.status == 0, "\(inside.err)")
        #expect(inside.out.contains("netshape/\(s.client)/fast"), "\(inside.out)")
        let nsInode = try must(["/usr/bin/stat", "-L", "-c", "%i", "/run/netns/\(s.client)"]).trimmingCharacters(
            in: .whitespacesAndNewlines)
        #expect(inside.out.contains("net:[\(nsInode)]"), "\(inside.out)")
        let unknown = try cli("run", policy, "nosuch", "--", "/bin/true")
        #expect(unknown.status == 2)
    }
}
