import Foundation
import Testing

/// Issue 8: netshape as a chained CNI plugin, run the way a container runtime runs it, after the
/// reference `bridge` + `host-local` plugins from Debian's containernetworking-plugins.
extension ApplyIntegrationTests {
    static let cniDir = "/usr/lib/cni"

    struct Pod {
        let id: String
        let netns: String
        let bridge: String
        let subnet: Int
        var gateway: String { "198.18.\(subnet).1" }
    }

    /// Runs one plugin with a CNI environment; returns (status, stdout).
    func cniRun(_ plugin: String, _ command: String, _ pod: Pod, _ config: [String: Any], ifname: String = "eth0")
        throws -> (Int32, String)
    {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: plugin)
        var env = ProcessInfo.processInfo.environment
        env["CNI_COMMAND"] = command
        env["CNI_CONTAINERID"] = pod.id
        env["CNI_NETNS"] = "/run/netns/\(pod.netns)"
        env["CNI_IFNAME"] = ifname
        env["CNI_PATH"] = Self.cniDir
        p.environment = env
        let inp = Pipe(), out = Pipe()
        p.standardInput = inp
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        inp.fileHandleForWriting.write(try JSONSerialization.data(withJSONObject: config))
        try inp.fileHandleForWriting.close()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    func bridgeConfig(_ pod: Pod) -> [String: Any] {
        [
            "cniVersion": "1.0.0", "name": "nstest", "type": "bridge", "bridge": pod.bridge, "isGateway": true,
            "ipMasq": false,
            "ipam": [
                "type": "host-local", "subnet": "198.18.\(pod.subnet).0/24",
                "dataDir": "/run/netshape-test-ipam-\(pod.id)",
            ],
        ]
    }

    @Test(
        .requiresIperf3,
        .enabled(
            if: FileManager.default.isExecutableFile(atPath: "/usr/lib/cni/bridge"),
            "containernetworking-plugins is not installed (scripts/deps installs it)"))
    func aChainedCNIPluginShapesThePodBothWays() throws {
        let id = Scratch.newID()
        let pod = Pod(id: "ctr\(id)", netns: "nst-\(id)-pod", bridge: "nsb\(id)", subnet: Int.random(in: 100...199))
        try must([ip, "netns", "add", pod.netns])
        defer {
            _ = try? cniRun(netshapeBinary, "DEL", pod, ["cniVersion": "1.0.0", "name": "nstest", "type": "netshape"])
            _ = try? cniRun("\(Self.cniDir)/bridge", "DEL", pod, bridgeConfig(pod))
            _ = try? run([ip, "netns", "del", pod.netns])
            _ = try? run([ip, "link", "del", pod.bridge])
            try? FileManager.default.removeItem(atPath: "/run/netshape-test-ipam-\(pod.id)")
        }
        // 1. The main plugin, as a runtime would call it.
        let (bs, bout) = try cniRun("\(Self.cniDir)/bridge", "ADD", pod, bridgeConfig(pod))
        try #require(bs == 0, "bridge ADD: \(bout)")
        let prevResult = try #require(try JSONSerialization.jsonObject(with: Data(bout.utf8)) as? [String: Any])
        // 2. netshape chained after it, with the bandwidth plugin's keys and containerd's "unset" burst.
        let config: [String: Any] = [
            "cniVersion": "1.0.0", "name": "nstest", "type": "netshape",
            "runtimeConfig": [
                "bandwidth": [
                    "egressRate": 12_000_000, "egressBurst": 4_294_967_295,
                    "ingressRate": 8_000_000, "ingressBurst": 4_294_967_295,
                ]
            ],
            "prevResult": prevResult,
        ]
        let (s1, out1) = try cniRun(netshapeBinary, "ADD", pod, config)
        #expect(s1 == 0, "\(out1)")
        let echoed = try JSONSerialization.jsonObject(with: Data(out1.utf8)) as? [String: Any]
        #expect(
            (echoed?["ips"] as? [Any])?.count == (prevResult["ips"] as? [Any])?.count, "prevResult is passed through")
        let (s2, out2) = try cniRun(netshapeBinary, "ADD", pod, config)
        #expect(s2 == 0, "ADD twice is fine: \(out2)")
        #expect(try cniRun(netshapeBinary, "CHECK", pod, config).0 == 0, "CHECK passes on a fresh pod")
        // Bare status shows the attachment from its record (there is no policy file to read).
        let status = try cli("status", "--interval", "0", "--json")
        #expect(status.status == 0, "\(status.err)")
        #expect(status.out.contains("\"policy\" : \"cni:"), "the CNI attachment is listed: \(status.out.prefix(600))")

        // 3. Shaped both ways: egress from the pod to the gateway, ingress into it (-R).
        // One-shot servers on the host side; killed at the end should a client never come.
        var servers: [Process] = []
        defer { for p in servers { p.stopNow() } }
        let srv = { (port: Int) throws -> Process in
            let p = Process()
            p.executableURL = URL(fileURLWithPath: iperf3)
            p.arguments = ["-s", "-1", "-B", pod.gateway, "-p", String(port)]
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            servers.append(p)
            try waitUntilListening(on: pod.gateway, port: port, in: nil)
            return p
        }
        let egress = try shapedGoodput(12e6, "CNI pod egress") {
            _ = try srv(5370)
            return try goodput(
                try run([ip, "netns", "exec", pod.netns, iperf3, "-c", pod.gateway, "-p", "5370", "-t", "3", "-J"]).out)
        }
        let ingress = try shapedGoodput(8e6, "CNI pod ingress") {
            _ = try srv(5371)
            return try goodput(
                try run([
                    ip, "netns", "exec", pod.netns, iperf3, "-c", pod.gateway, "-p", "5371", "-t", "3", "-J", "-R",
                ])
                .out)
        }
        print("CNI pod: egress \(mbit(egress)) for 12mbit, ingress \(mbit(ingress)) for 8mbit")
        #expect(shapedAt(egress, 12e6), "egress \(mbit(egress)) for 12 Mbit/s")
        #expect(shapedAt(ingress, 8e6), "ingress \(mbit(ingress)) for 8 Mbit/s")

        // 4. CHECK compares the whole state: a deleted qdisc must fail it.
        try must([tc, "-n", pod.netns, "qdisc", "del", "dev", "eth0", "root"])
        let (cs, cout) = try cniRun(netshapeBinary, "CHECK", pod, config)
        #expect(cs == 1 && cout.contains("\"code\":100"), "CHECK fails after tampering: \(cout)")

        // 5. DEL, even without prevResult, leaves nothing of netshape's behind.
        let (ds, dout) = try cniRun(
            netshapeBinary, "DEL", pod, ["cniVersion": "1.0.0", "name": "nstest", "type": "netshape"])
        #expect(ds == 0, "\(dout)")
        let hostVeths = try must([ip, "-br", "link", "show", "master", pod.bridge])
        for line in hostVeths.split(separator: "\n") {
            let dev = String(line.split(separator: " ")[0].split(separator: "@")[0])
            #expect(!(try must([tc, "qdisc", "show", "dev", dev]).contains("htb")), "no tree left on \(dev)")
        }
        #expect(!(try must([tc, "-n", pod.netns, "qdisc", "show", "dev", "eth0"]).contains("htb")))
        let owned = (try? String(contentsOfFile: "/run/netshape/ownership.json", encoding: .utf8)) ?? ""
        #expect(!owned.contains(pod.id), "no ownership left")
        #expect(
            try cniRun(netshapeBinary, "DEL", pod, ["cniVersion": "1.0.0", "name": "nstest", "type": "netshape"]).0
                == 0,
            "DEL twice is fine")
    }

    @Test func cniVersionAndErrors() throws {
        let pod = Pod(id: "ctrx", netns: "nonexistent", bridge: "", subnet: 0)
        let (vs, vout) = try cniRun(netshapeBinary, "VERSION", pod, ["cniVersion": "1.0.0"])
        #expect(vs == 0 && vout.contains("\"supportedVersions\""), "\(vout)")
        let (es, eout) = try cniRun(
            netshapeBinary, "ADD", pod, ["cniVersion": "9.9.9", "name": "x", "type": "netshape"])
        #expect(es == 1 && eout.contains("\"code\":1"), "\(eout)")
        let (bs, bout) = try cniRun(
            netshapeBinary, "ADD", pod,
            [
                "cniVersion": "1.0.0", "name": "x", "type": "netshape",
                "egressRate": 0,
            ])
        #expect(bs == 1 && bout.contains("\"code\":7"), "a zero rate is an invalid config: \(bout)")
    }
}
