import Foundation
import Testing

/// Issue 4: every way of naming a namespace, ingress both ways, provisioning, vanished namespaces.
/// An extension of the serialized suite, so no two measurements share the cores.
extension ApplyIntegrationTests {
    func rootQdisc(_ s: Scratch) throws -> String {
        try must([tc, "-n", s.client, "qdisc", "show", "dev", s.dev, "root"])
    }

    @Test func targetsByNamePathAndPid() throws {
        let s = try Scratch()
        defer { s.close() }
        let sleeper = try background(in: s.client, ["/bin/sleep", "30"])
        defer { sleeper.stopNow() }
        for target in ["/run/netns/\(s.client)", "pid:\(sleeper.processIdentifier)"] {
            let text =
                "version = 1\n[[namespace]]\nname = \"t\(s.id)\"\nnetns = \"\(target)\"\ndevice = \"\(s.dev)\"\negress = \"50mbit\"\n"
            let path = s.dir.appendingPathComponent("target.toml").path
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            let applied = try cli("apply", path)
            #expect(applied.status == 0, "\(target): \(applied.err)")
            #expect(try rootQdisc(s).contains("htb"), "shaped through \(target)")
            #expect(try cli("apply", path).out.contains("no changes"))
            #expect(try cli("reset", path).status == 0)
            #expect(!(try rootQdisc(s).contains("htb")), "reset through \(target)")
        }
        let missing = try s.policy(name: "missing", "egress = \"1mbit\"")
        let text = try String(contentsOfFile: missing, encoding: .utf8).replacingOccurrences(
            of: "netns = \"\(s.client)\"", with: "netns = \"pid:999999999\"")
        try text.write(toFile: missing, atomically: true, encoding: .utf8)
        let r = try cli("apply", missing)
        #expect(r.status == 1 && r.err.contains("pid:999999999") && r.err.contains("does not exist"), "\(r.err)")
    }

    @Test func theHostTargetIsTheNamespaceNetshapeRunsIn() throws {
        let s = try Scratch()
        defer { s.close() }
        // A default route makes veth0 the default-route device, so `device` can be left out.
        try must([ip, "-n", s.client, "route", "add", "default", "via", s.serverIP])
        let path = s.dir.appendingPathComponent("host.toml").path
        try "version = 1\n[[namespace]]\nname = \"h\(s.id)\"\nnetns = \"host\"\negress = \"30mbit\"\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        // nsenter changes only the network namespace (unlike ip netns exec, which also remounts /sys).
        let nsenter = ["/usr/bin/nsenter", "--net=/run/netns/\(s.client)", netshapeBinary]
        let applied = try run(nsenter + ["apply", path])
        #expect(applied.status == 0, "\(applied.err)")
        #expect(applied.out.contains("dev veth0"), "the default-route device was chosen: \(applied.out)")
        #expect(applied.out.contains("no device given: shaping veth0"), "and it says so: \(applied.out)")
        #expect(try rootQdisc(s).contains("htb"))
        let hostRoot = try must([tc, "qdisc", "show", "dev", "lo"])
        #expect(!hostRoot.contains("htb"), "the real host was not touched")
        #expect(try run(nsenter + ["reset", path]).status == 0)
        #expect(!(try rootQdisc(s).contains("htb")))
    }

    @Test(.requiresIperf3) func ingressThroughAnIFBWhenThePeerIsNotInTheHost() throws {
        let s = try Scratch()
        defer { s.close() }
        // The scratch pair's peer lives in the server namespace, not netshape's: an IFB is needed.
        let policy = try s.policy("egress = \"100mbit\"\ningress = \"15mbit\"")
        let applied = try cli("apply", policy)
        #expect(applied.status == 0, "\(applied.err)")
        #expect(applied.out.contains("type ifb") && applied.out.contains("mirred egress redirect"), "\(applied.out)")
        let links = try must([ip, "-n", s.client, "-d", "link", "show", "type", "ifb"])
        #expect(links.contains("qlen 1000"), "the IFB has a queue: \(links)")
        let bps = try shapedGoodput(15e6, "ingress through IFB") {
            try s.iperfServer(port: 5340)
            return try goodput(
                try run([ip, "netns", "exec", s.client] + s.iperfClient(port: 5340, seconds: 4, extra: ["-R"])).out)
        }
        print("ingress through IFB: \(mbit(bps)) for a 15mbit limit")
        #expect(shapedAt(bps, 15e6), "\(mbit(bps)) for 15 Mbit/s")
        let status = try cli("status", policy, "--interval", "0")
        #expect(status.out.contains("IFB"), "\(status.out)")
        #expect(try cli("reset", policy).status == 0)
        #expect(!(try must([ip, "-n", s.client, "link", "show"]).contains("nsifb")), "the IFB is gone")
        #expect(!(try must([tc, "-n", s.client, "qdisc", "show", "dev", s.dev]).contains("ingress")))
    }

    @Test(.requiresIperf3) func provisionedNamespacesOnABridgeAreShapedIndependently() throws {
        let id = String(UInt32.random(in: 0..<UInt32.max), radix: 36).prefix(6)
        let subnet = Int.random(in: 0...255)
        let names = ["p\(id)a", "p\(id)b", "p\(id)c", "p\(id)s"]
        let bridge = "nb\(id)"
        let rates = [10, 20, 30]
        var text = "version = 1\n"
        for (i, n) in names.enumerated() {
            let egress = i < 3 ? "\(rates[i])mbit" : "10gbit"
            text += "[[namespace]]\nname = \"\(n)\"\negress = \"\(egress)\"\n"
            if i == 0 { text += "ingress = \"8mbit\"\n" }
            text += "[namespace.provision]\naddress = \"198.19.\(subnet).\(i + 2)/24\"\nbridge = \"\(bridge)\"\n"
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("netshape-prov-\(id)")
        try FileManager.default.createDirectory(
            at: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let policy = dir.appendingPathComponent("p.toml").path
        try text.write(toFile: policy, atomically: true, encoding: .utf8)
        var servers: [Process] = []
        defer {
            for p in servers { p.stopNow() }
            _ = try? cli("reset", policy)
            for n in names { _ = try? run([ip, "netns", "del", n]) }
            _ = try? run([ip, "link", "del", bridge])
            try? FileManager.default.removeItem(at: dir)
        }
        let applied = try cli("apply", policy)
        #expect(applied.status == 0, "\(applied.err)")
        #expect(try cli("apply", policy).out.contains("no changes"))
        let srv = names[3]
        let srvIP = "198.19.\(subnet).5"
        let serve = { (ports: ClosedRange<Int>) throws in
            for port in ports {
                servers.append(
                    try background(in: srv, [iperf3, "-s", "-1", "-B", srvIP, "-p", String(port)]))
            }
            for port in ports { try waitUntilListening(on: srvIP, port: port, in: srv) }
        }
        let measured = try shapedGoodputs(rates.map { Double($0) * 1e6 }, "three namespaces") {
            try serve(5350...5352)
            let results = try concurrently(
                (0..<3).map { i in
                    [ip, "netns", "exec", names[i], iperf3, "-c", srvIP, "-p", String(5350 + i), "-t", "4", "-J"]
                })
            return try results.map { try goodput($0.out) }
        }
        print("three namespaces at once: \(measured.map(mbit)) for 10/20/30 mbit")
        for (bps, want) in zip(measured, rates.map { Double($0) * 1e6 }) {
            #expect(shapedAt(bps, want), "\(mbit(bps)) for \(mbit(want))")
        }
        let ingress = try shapedGoodput(8e6, "ingress on the host-side peer") {
            try serve(5353...5353)
            return try goodput(
                try run([ip, "netns", "exec", names[0], iperf3, "-c", srvIP, "-p", "5353", "-t", "3", "-J", "-R"]).out)
        }
        print("ingress into \(names[0]) on its host-side peer: \(mbit(ingress)) for 8mbit")
        #expect(shapedAt(ingress, 8e6), "\(mbit(ingress)) for 8 Mbit/s")
        let status = try cli("status", policy, "--interval", "0")
        #expect(status.out.contains("veth peer in the host namespace"), "\(status.out)")

        let reset = try cli("reset", policy)
        #expect(reset.status == 0, "\(reset.err)")
        let netns = try must([ip, "netns", "list"])
        #expect(names.allSatisfy { !netns.contains($0) }, "no namespace left: \(netns)")
        // netshape's part is deleting the namespaces (asserted above, and by the commands reset
        // printed). The kernel then tears their veth pairs down asynchronously, and later still
        // while orphaned TCP sockets hold a namespace: under load that was seen to take over 90 s,
        // which says nothing about netshape, so it is waited for and reported, not asserted.
        #expect(names.allSatisfy { reset.out.contains("ip netns del \($0)") }, "\(reset.out)")
        let gone =
            (try? waitFor(seconds: 30, "the provisioned links to go") {
                !((try? must([ip, "-br", "link", "show"])) ?? "").contains(String(id))
            }) != nil
        if !gone { print("note: the kernel is still tearing down the deleted namespaces' veth pairs after 30 s") }
        #expect(!FileManager.default.fileExists(atPath: "/sys/fs/cgroup/net_cls/netshape/\(names[0])"))
        let owned = (try? String(contentsOfFile: "/run/netshape/ownership.json", encoding: .utf8)) ?? ""
        #expect(!owned.contains(String(id)), "no ownership left")
    }

    @Test func aNamespaceDeletedUnderNetshapeIsReportedAndDisturbsNothingElse() throws {
        let a = try Scratch()
        defer { a.close() }
        let b = try Scratch()
        defer { b.close() }
        var text = "version = 1\n"
        for s in [a, b] {
            text += "[[namespace]]\nname = \"\(s.client)\"\ndevice = \"\(s.dev)\"\negress = \"20mbit\"\n"
        }
        let policy = a.dir.appendingPathComponent("two.toml").path
        try text.write(toFile: policy, atomically: true, encoding: .utf8)
        #expect(try cli("apply", policy).status == 0)
        let bBefore = try b.snapshot()
        try must([ip, "netns", "del", a.client])
        let again = try cli("apply", policy)
        #expect(
            again.status == 1 && again.err.contains(a.client) && again.err.contains("does not exist"), "\(again.err)")
        #expect(try b.snapshot() == bBefore, "the other namespace is untouched")
        // status shows the namespace that is left and says which is not there, with exit 1.
        let status = try cli("status", policy, "--interval", "0")
        #expect(status.status == 1 && status.err.contains(a.client), "\(status.err)")
        #expect(status.out.contains("does not exist") && status.out.contains(b.client), "\(status.out)")
        let reset = try cli("reset", policy)
        #expect(reset.status == 0, "\(reset.err)")
        #expect(!(try rootQdisc(b).contains("htb")), "reset still cleans the namespace that is left")
    }
}
