import Foundation
import Testing

/// Issue 12 item 2: classes in a CNI `netshape` block get the pod's processes. The CNI plugin
/// only runs at ADD; a process started in the pod later is classified by the running daemon,
/// which follows the plugin's recorded attachments. Part of the serialized suite.
extension ApplyIntegrationTests {
    @Test(.requiresIperf3) func theDaemonClassifiesAPodsProcessesByItsCNIClasses() throws {
        let s = try Scratch()
        defer { s.close() }
        let id = "ctr\(s.id)"
        let pod = Pod(id: id, netns: s.client, bridge: "", subnet: 0)
        // The pod is the scratch client namespace; its classes come only from the CNI config.
        let config: [String: Any] = [
            "cniVersion": "1.0.0", "name": "nstest", "type": "netshape", "egressRate": 200_000_000,
            "netshape": [
                "default": "rest",
                "classes": [
                    ["name": "capped", "rate": "10mbit", "ceil": "10mbit", "match": ["comm": ["nscnicls"]]],
                    ["name": "rest", "rate": "100mbit"],
                ],
            ],
        ]
        // The daemon runs a node policy of its own (the server side), as on a Kubernetes node.
        let nodePolicy = s.dir.appendingPathComponent("node.toml")
        try """
        version = 1
        [[namespace]]
        name = "\(s.server)"
        netns = "\(s.server)"
        device = "\(s.serverDev)"
        egress = "1gbit"
        """.write(to: nodePolicy, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: nodePolicy.path)
        let d = try DaemonProcess(policy: nodePolicy.path, dir: s.dir)
        defer { _ = d.stop() }

        let (added, addOut) = try cniRun(netshapeBinary, "ADD", pod, config, ifname: s.dev)
        defer { _ = try? cniRun(netshapeBinary, "DEL", pod, config, ifname: s.dev) }
        #expect(added == 0, "ADD: \(addOut)")
        let name = try #require(
            try FileManager.default.contentsOfDirectory(atPath: "/run/netshape/cni").first { file in
                let text = (try? String(contentsOfFile: "/run/netshape/cni/\(file)", encoding: .utf8)) ?? ""
                return text.contains("\"containerID\":\"\(id)\"")
            }
        ).replacingOccurrences(of: ".json", with: "")
        try waitFor(seconds: 10, "the daemon to follow the pod") { d.text.contains("following CNI attachment \(name)") }
        let cgroup = "/sys/fs/cgroup/net_cls/netshape/\(name)/capped"
        let classid = try #require(
            UInt32(
                try String(contentsOfFile: "\(cgroup)/net_cls.classid", encoding: .utf8)
                    .trimmingCharacters(in: .whitespacesAndNewlines))?.classidString)

        // A process started in the pod after ADD, named like the class's comm rule.
        let bin = s.dir.appendingPathComponent("nscnicls").path
        try FileManager.default.copyItem(atPath: iperf3, toPath: bin)
        var inClass = 0
        let bps = try shapedGoodput(10e6, "pod process under the daemon") {
            try s.iperfServer(port: 5371)
            let before = try s.classes()
            let result = s.dir.appendingPathComponent("iperf.json")
            FileManager.default.createFile(atPath: result.path, contents: nil)
            let client = Process()
            client.executableURL = URL(fileURLWithPath: ip)
            // `ip netns exec` execs the program in place: the pid is the pod process's.
            client.arguments = ["netns", "exec", s.client, bin, "-c", s.serverIP, "-p", "5371", "-t", "3", "-J"]
            client.standardOutput = try FileHandle(forWritingTo: result)
            client.standardError = FileHandle.nullDevice
            try client.run()
            try waitFor(seconds: 2, "the pod's process in the class's cgroup") {
                let procs = (try? String(contentsOfFile: "\(cgroup)/cgroup.procs", encoding: .utf8)) ?? ""
                return procs.split(separator: "\n").contains(Substring(String(client.processIdentifier)))
            }
            client.waitUntilExit()
            let json = try String(contentsOf: result, encoding: .utf8)
            let after = try s.classes()
            inClass = (after[classid]?.bytes ?? 0) - (before[classid]?.bytes ?? 0)
            return try goodput(json)
        }
        print("pod process under the daemon, class from the CNI block: \(mbit(bps)) for 10mbit, \(inClass) bytes in it")
        #expect(inClass > 2_000_000, "the class counter moved")
        #expect(shapedAt(bps, 10e6), "\(mbit(bps)) for 10 Mbit/s")
        #expect(d.text.contains("into \(name)/capped"), "the daemon classified it (on exec)")

        let (deleted, delOut) = try cniRun(netshapeBinary, "DEL", pod, config, ifname: s.dev)
        #expect(deleted == 0, "DEL: \(delOut)")
        #expect(!FileManager.default.fileExists(atPath: "/run/netshape/cni/\(name).json"), "DEL forgets the attachment")
        try waitFor(seconds: 10, "the daemon to stop following the pod") {
            d.text.contains("CNI attachment \(name) is gone")
        }
    }
}
