import Foundation
import Testing

/// Issue 13: hostile input against the real binary. A rejected input leaves tc, cgroupfs and
/// /run/netshape as they were. Part of the serialized suite.
extension ApplyIntegrationTests {
    var ownershipText: String { (try? String(contentsOfFile: "/run/netshape/ownership.json", encoding: .utf8)) ?? "" }

    @Test func aFIFOOrAnotherKindOfNamespaceIsRefusedAtOnceChangingNothing() throws {
        let s = try Scratch()
        defer { s.close() }
        let fifo = s.dir.appendingPathComponent("fifo").path
        try #require(mkfifo(fifo, 0o600) == 0)
        let before = try s.snapshot() + ownershipText
        for (target, words) in [
            (fifo, "not a network namespace file"), ("/proc/self/ns/mnt", "not a network namespace"),
        ] {
            let url = s.dir.appendingPathComponent("t.toml")
            try "version = 1\n[[namespace]]\nname = \"\(s.client)\"\nnetns = \"\(target)\"\negress = \"10mbit\"\n"
                .write(
                    to: url, atomically: true, encoding: .utf8)
            chmod(url.path, 0o600)
            let t = Date()
            let r = try cli("apply", url.path)
            #expect(r.status == 1 && r.err.contains(words), "\(target): \(r.status) \(r.err)")
            #expect(Date().timeIntervalSince(t) < 10, "no hang on \(target)")
            try FileManager.default.removeItem(at: url)
        }
        #expect(try s.snapshot() + ownershipText == before, "nothing changed")
    }

    @Test func reloadRefusesAPolicyOthersCouldWriteAndKeepsTheRunningOne() throws {
        let s = try Scratch()
        defer { s.close() }
        let policy = try s.policy(Self.daemonPolicy)
        let d = try DaemonProcess(policy: policy, dir: s.dir)
        let good = try String(contentsOfFile: policy, encoding: .utf8)
        let edited = good.replacingOccurrences(of: "rate = \"100mbit\"", with: "rate = \"90mbit\"")
        let tampers: [(() -> Void, String)] = [
            ({ _ = chmod(policy, 0o666) }, "is writable by group or others"),
            (
                {
                    _ = chmod(policy, 0o600); _ = chown(policy, 65534, 65534)
                }, "is owned by uid 65534"
            ),
        ]
        for (n, (tamper, words)) in tampers.enumerated() {
            // Written in place (atomically: false) so the mode and owner set below are the file's.
            try edited.write(toFile: policy, atomically: false, encoding: .utf8)
            tamper()
            kill(d.process.processIdentifier, SIGHUP)
            try waitFor(seconds: 10, "reload \(n) to be refused") {
                d.text.components(separatedBy: "reload rejected").count - 1 > n
            }
            #expect(d.text.contains(words), "\(words): \(d.text.suffix(600))")
            #expect(try s.classes().values.contains { $0.rate == 100e6 }, "the running policy stays in force")
            #expect(!(try s.classes().values.contains { $0.rate == 90e6 }))
        }
        chown(policy, 0, 0)
        kill(d.process.processIdentifier, SIGHUP)
        try waitFor(seconds: 10, "the safe reload to apply") { d.text.contains("reloaded") }
        #expect(try s.classes().values.contains { $0.rate == 90e6 }, "the same edit applies once the file is safe")
        #expect(d.stop().0 == 0)
    }

    /// A pod netns with an `eth0` (a veth whose peer stays inside: egress shaping needs no bridge).
    func gcPod(_ tag: String) throws -> Pod {
        let id = Scratch.newID()
        let pod = Pod(id: "ctr\(tag)\(id)", netns: "nst-\(id)-\(tag)", bridge: "", subnet: 0)
        try must([ip, "netns", "add", pod.netns])
        try must([ip, "-n", pod.netns, "link", "add", "eth0", "type", "veth", "peer", "name", "p0"])
        try must([ip, "-n", pod.netns, "link", "set", "eth0", "up"])
        try must([ip, "-n", pod.netns, "link", "set", "p0", "up"])
        return pod
    }

    func htb(_ pod: Pod) throws -> Bool {
        try must([tc, "-n", pod.netns, "qdisc", "show", "dev", "eth0"]).contains("htb")
    }

    @Test func cniGCRemovesOnlyThisNetworksStaleAttachmentsAndBadConfigChangesNothing() throws {
        let stale = try gcPod("a")
        let valid = try gcPod("b")
        let other = try gcPod("c")
        let pods = [(stale, "nsgc"), (valid, "nsgc"), (other, "nsother")]
        defer {
            for (p, net) in pods {
                _ = try? cniRun(netshapeBinary, "DEL", p, ["cniVersion": "1.1.0", "name": net, "type": "netshape"])
                _ = try? run([ip, "netns", "del", p.netns])
            }
        }
        for (p, net) in pods {
            let (st, out) = try cniRun(
                netshapeBinary, "ADD", p,
                ["cniVersion": "1.1.0", "name": net, "type": "netshape", "egressRate": 20_000_000])
            try #require(st == 0, "ADD \(p.id): \(out)")
            let result = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any]
            #expect(result?["cniVersion"] as? String == "1.1.0" && result?["ips"] != nil, "a valid result: \(out)")
            #expect(try htb(p))
        }
        // A string rate (what the bandwidth plugin refuses) changes nothing, on the live pod too.
        let before = try must([tc, "-n", stale.netns, "-s", "-d", "class", "show", "dev", "eth0"]).count
        let ownedBefore = ownershipText
        let (bs, bout) = try cniRun(
            netshapeBinary, "ADD", stale,
            ["cniVersion": "1.1.0", "name": "nsgc", "type": "netshape", "egressRate": "10mbit"])
        #expect(bs == 1 && bout.contains("\"code\":7") && bout.contains("egressRate"), "\(bout)")
        #expect(try must([tc, "-n", stale.netns, "-s", "-d", "class", "show", "dev", "eth0"]).count == before)
        #expect(ownershipText == ownedBefore, "the record is untouched")

        let (gs, gout) = try cniRun(
            netshapeBinary, "GC", valid,
            [
                "cniVersion": "1.1.0", "name": "nsgc", "type": "netshape",
                "cni.dev/valid-attachments": [["containerID": valid.id, "ifname": "eth0"]],
            ])
        #expect(gs == 0, "GC: \(gout)")
        #expect(!(try htb(stale)), "the stale attachment's shaping is removed")
        #expect(!ownershipText.contains(stale.id), "and its record")
        #expect(try htb(valid) && ownershipText.contains(valid.id), "the valid attachment stays")
        #expect(try htb(other) && ownershipText.contains(other.id), "another network's attachment stays")
    }
}
