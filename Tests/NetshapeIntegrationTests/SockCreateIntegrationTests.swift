import Foundation
import NetshapeCore
import NetshapeKernel
import Testing

extension Trait where Self == ConditionTrait {
    /// A kernel that runs netshape's sock_create program (probed as netshape probes it).
    static var requiresSockCreate: Self {
        .enabled(
            if: Capability.kernel?.sockCreate == true,
            Comment(
                rawValue: "this kernel cannot run the sock_create program (no cgroup2 mount, no SO_NETNS_COOKIE, "
                    + "or the verifier refuses a helper): the daemon path alone is tested"))
    }
}

extension ApplyIntegrationTests {
    /// The socket-creation classifier on the real kernel: a process that matches a `comm` class is
    /// classified when it creates its sockets, with no daemon and no net_cls move. Nested in the
    /// serialized suite (its traits apply): the hook and its map are one per host, compared whole here,
    /// and another suite's comm-rule policy or iperf3 run beside these tests would change or share them.
    @Suite(.requiresSockCreate)
    struct SockCreateIntegrationTests {
        static let body = """
            egress = "100mbit"
            default = "other"

            [[namespace.class]]
            name = "perf"
            rate = "8mbit"
            ceil = "8mbit"
            match.comm = ["iperf3"]

            [[namespace.class]]
            name = "other"
            rate = "50mbit"
            """

        /// The map's rules for one namespace, by its cookie.
        static func rules(_ s: Scratch) throws -> [SockKey: SockVerdict] {
            let cookie = try SockCreateInspection.cookie(of: .named(s.client))
            return try SockCreateInspection.current().entries.filter { $0.key.cookie == cookie }
        }

        @Test(.requiresIperf3) func aProcessStartedAfterApplySendsThroughItsClassWithNoDaemon() throws {
            let s = try Scratch()
            defer { s.close() }
            let policy = try s.policy(Self.body)
            let applied = try cli("apply", policy)
            try #require(applied.status == 0, "\(applied.err)")
            #expect(try SockCreateInspection.current().attached)
            #expect(try Self.rules(s).count == 1)
            let status = try cli("status", policy, "--json", "--interval", "0")
            #expect(status.out.contains("\"path\" : \"sock_create\""), "\(status.out)")

            try s.iperfServer(port: 5340)
            let before = try s.classes()
            let out = try must([ip, "netns", "exec", s.client] + s.iperfClient(port: 5340, seconds: 3))
            let after = try s.classes()
            let ids = try #require(
                try JSONSerialization.jsonObject(with: Data(status.out.utf8)) as? [String: Any])
            let classes = ((ids["namespaces"] as? [[String: Any]])?.first?["classes"] as? [[String: Any]]) ?? []
            let perfID = try #require(classes.first { $0["name"] as? String == "perf" }?["classid"] as? String)
            let otherID = try #require(classes.first { $0["name"] as? String == "other" }?["classid"] as? String)
            let perf = (after[perfID]?.bytes ?? 0) - (before[perfID]?.bytes ?? 0)
            let other = (after[otherID]?.bytes ?? 0) - (before[otherID]?.bytes ?? 0)
            let escaped = Double(other) / Double(max(1, perf + other))
            print("sock_create: perf \(perf) B, other classes \(other) B, escaped \(escaped * 100) %")
            #expect(perf > 1_000_000, "iperf3 sent through its class: \(perf) B")
            #expect(escaped <= 0.005, "escaped \(escaped * 100) % (\(other) of \(perf + other) B)")
            let rate = try goodput(out)
            #expect(rate < 8.8e6, "shaped at the class's 8 Mbit/s ceil: \(mbit(rate))")
            // No daemon ran and nothing moved it: its net_cls cgroup stayed empty.
            let members = try String(
                contentsOfFile: "/sys/fs/cgroup/net_cls/netshape/\(s.client)/perf/cgroup.procs", encoding: .utf8)
            #expect(members.isEmpty)
        }

        @Test func editsUpdateTheMapInPlaceAndResetRemovesEverything() throws {
            let s = try Scratch()
            defer { s.close() }
            let policy = try s.policy(Self.body)
            try #require(try cli("apply", policy).status == 0)
            let first = try Self.rules(s)
            // A second comm is one map update: no re-attach, no other change to the tree.
            try s.policy(Self.body.replacingOccurrences(of: "[\"iperf3\"]", with: "[\"iperf3\", \"curl\"]"))
            let edit = try cli("apply", policy)
            #expect(edit.status == 0, "\(edit.err)")
            #expect(edit.out.contains("bpftool map update") && !edit.out.contains("cgroup attach"), "\(edit.out)")
            #expect(edit.out.contains("applied 1 change(s)"), "\(edit.out)")
            let second = try Self.rules(s)
            #expect(second.count == 2 && first.allSatisfy { second[$0.key] == $0.value })

            let reset = try cli("reset", policy)
            #expect(reset.status == 0, "\(reset.err)")
            #expect(try Self.rules(s).isEmpty)
            let now = try SockCreateInspection.current()
            // Detached unless someone else's rules (another state directory) are still in the map.
            #expect(now.entries.isEmpty ? !now.attached : now.attached, "\(now)")
            #expect(reset.out.contains("cgroup detach") == !now.attached, "\(reset.out)")
        }

        /// HTB takes the priority the program sets before any cgroup's classid, so `run` or
        /// `classify` into a net_cls class would not put a process an earlier comm class matches in
        /// the class asked for: both refuse, and move nothing.
        @Test func runAndClassifyRefuseWhatTheProgramWouldTakeElsewhere() throws {
            let s = try Scratch()
            defer { s.close() }
            let policy = try s.policy(Self.body)
            try #require(try cli("apply", policy).status == 0)
            defer { _ = try? cli("reset", policy) }
            let other = "/sys/fs/cgroup/net_cls/netshape/\(s.client)/other/cgroup.procs"
            let members = { (try? String(contentsOfFile: other, encoding: .utf8)) ?? "?" }
            let before = try s.snapshot() + members()

            let refused = try cli("run", policy, "other", "--", iperf3, "--version")
            #expect(refused.status == 1, "\(refused.out)\(refused.err)")
            #expect(
                refused.err.contains("matches class perf's rules") && refused.err.contains("not other"),
                "\(refused.err)")
            #expect(!refused.out.contains("iperf 3"), "the command did not run: \(refused.out)")
            #expect(try cli("run", policy, "perf", "--", iperf3, "--version").status == 0, "its own class is fine")
            #expect(try cli("run", policy, "other", "--", "/bin/true").status == 0, "another command is fine")
            // Under `ip netns exec` (a fresh /sys, no cgroup2 mount) the rules cannot be read: the
            // command runs, and a note says it was not checked.
            let unchecked = try run([
                ip, "netns", "exec", s.client, netshapeBinary, "run", policy, "other", "--", iperf3, "-v",
            ])
            #expect(unchecked.status == 0 && unchecked.err.contains("not checked"), "\(unchecked.err)")
            // apply must read the hook to keep it in step: it refuses there, says why, changes nothing.
            let edited = try s.policy(name: "edited", Self.body.replacingOccurrences(of: "50mbit", with: "40mbit"))
            let hidden = try run([ip, "netns", "exec", s.client, netshapeBinary, "apply", edited])
            #expect(hidden.status == 1 && hidden.err.contains("without ip netns exec"), "\(hidden.err)")

            // A running process named like the rule (a sleep under iperf3's name).
            let named = s.dir.appendingPathComponent("iperf3").path
            try FileManager.default.copyItem(atPath: "/bin/sleep", toPath: named)
            let sleeper = try background(in: s.client, [named, "30"])
            defer { sleeper.stopNow() }
            try waitFor(seconds: 5, "the sleeper to exec") {
                (try? String(contentsOfFile: "/proc/\(sleeper.processIdentifier)/comm", encoding: .utf8))
                    == "iperf3\n"
            }
            let pid = String(sleeper.processIdentifier)
            let moved = try cli("classify", policy, "other", pid)
            #expect(
                moved.status == 1 && moved.err.contains("process \(pid)") && moved.err.contains("perf"), "\(moved.err)")
            #expect(try s.snapshot() + members() == before, "nothing changed")
            #expect(try cli("classify", policy, "perf", pid).status == 0)
        }

        /// c208 and c396 hash to one minor: c396 got the next one, and keeps it once c208 is gone,
        /// where a fresh plan would number it c208's. `run` must compare with what was applied.
        @Test func runCountsAClassByTheClassidItWasAppliedWith() throws {
            let s = try Scratch()
            defer { s.close() }
            func body(_ names: [String]) -> String {
                "egress = \"100mbit\"\ndefault = \"rest\"\n"
                    + names.map { n in
                        "[[namespace.class]]\nname = \"\(n)\"\nrate = \"5mbit\"\n"
                            + (n == "c396" ? "match.comm = [\"iperf3\"]\n" : "")
                    }.joined()
            }
            let policy = try s.policy(body(["rest", "c208", "c396"]))
            try #require(try cli("apply", policy).status == 0)
            defer { _ = try? cli("reset", policy) }
            _ = try s.policy(body(["rest", "c396"]))  // the same file, c208 gone
            let second = try cli("apply", policy)
            try #require(second.status == 0, "\(second.err)")
            let own = try cli("run", policy, "c396", "--", iperf3, "-v")
            #expect(own.status == 0 && own.out.contains("iperf 3"), "its own class: \(own.err)")
            let other = try cli("run", policy, "rest", "--", iperf3, "-v")
            #expect(other.status == 1 && other.err.contains("matches class c396's rules"), "\(other.err)")
        }

        /// Two netshapes with separate state directories (separate records and locks) share the one
        /// hook: applied at the same moment they attach one program, and the last reset takes it away.
        @Test func twoStateDirectoriesAtOnceAttachOneProgram() throws {
            let a = try Scratch()
            defer { a.close() }
            let b = try Scratch()
            defer { b.close() }
            try #require(try SockCreateInspection.attachedPrograms() == 0, "the hook is free before the test")
            let dirs = [a.dir.appendingPathComponent("state").path, b.dir.appendingPathComponent("state").path]
            let policies = [try a.policy(Self.body), try b.policy(Self.body)]
            let env = "/usr/bin/env"
            for round in 1...4 {
                let applied = try concurrently(
                    (0..<2).map { [env, "NETSHAPE_STATE_DIR=\(dirs[$0])", netshapeBinary, "apply", policies[$0]] })
                #expect(applied.allSatisfy { $0.status == 0 }, "round \(round): \(applied.map(\.err))")
                #expect(try SockCreateInspection.attachedPrograms() == 1, "round \(round)")
                #expect(
                    try Self.rules(a).count == 1 && Self.rules(b).count == 1, "round \(round): both tables in the map")
                #expect(try cli(env: ["NETSHAPE_STATE_DIR": dirs[0]], "reset", policies[0]).status == 0)
                #expect(try SockCreateInspection.attachedPrograms() == 1, "b's rules keep the program")
                #expect(try Self.rules(b).count == 1 && Self.rules(a).isEmpty)
                #expect(try cli(env: ["NETSHAPE_STATE_DIR": dirs[1]], "reset", policies[1]).status == 0)
                #expect(try SockCreateInspection.attachedPrograms() == 0, "round \(round): the last reset detaches")
            }
        }

        @Test func badInputAndAFailureHalfWayChangeNothing() throws {
            let s = try Scratch()
            defer { s.close() }
            let before = try SockCreateInspection.current()
            let bad = try s.policy(
                name: "bad", Self.body.replacingOccurrences(of: "[\"iperf3\"]", with: "[\"a-name-longer-than-15\"]"))
            let r = try cli("apply", bad)
            #expect(r.status == 65, "\(r.err)")
            #expect(try SockCreateInspection.current() == before)
            // Fail every operation of the apply in turn up to the map update: each run rolls back, and
            // leaves the hook as it found it.
            let policy = try s.policy(Self.body)
            let plan = try cli("plan", policy, "--json")
            let ops = try #require(
                (try JSONSerialization.jsonObject(with: Data(plan.out.utf8)) as? [String: Any])?["operations"]
                    as? [[String: Any]])
            let sockOps = ops.enumerated().filter { $0.element["object"] as? String == "sockcreate" }.map(\.offset)
            try #require(!sockOps.isEmpty, "the plan uses the hook: \(plan.out)")
            for index in sockOps {
                let failed = try cli(env: ["NETSHAPE_FAIL_OPERATION": String(index + 1)], "apply", policy)
                #expect(failed.status == 1 && failed.err.contains("rolled back"), "\(failed.err)")
                #expect(try SockCreateInspection.current() == before, "after a fault at operation \(index + 1)")
                #expect(try Self.rules(s).isEmpty)
            }
            try #require(try cli("apply", policy).status == 0)
            try #require(try cli("reset", policy).status == 0)
        }
    }
}
