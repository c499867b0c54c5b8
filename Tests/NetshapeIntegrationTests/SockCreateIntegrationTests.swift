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
