import Foundation
import Testing

/// Issue 12 item 2: classes in a CNI `netshape` block get the pod's processes. The CNI plugin
/// only runs at ADD; a process started in the pod later is classified by the running daemon,
/// which follows the plugin's recorded attachments. Part of the serialized suite.
extension ApplyIntegrationTests {
    /// Runs the netshape binary as a CNI plugin on `netns`/`ifname`; returns (status, stdout).
    func netshapeCNI(_ command: String, id: String, netns: String, ifname: String, _ config: [String: Any]) throws
        -> (Int32, String)
    {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: netshapeBinary)
        var env = ProcessInfo.processInfo.environment
        env["CNI_COMMAND"] = command
        env["CNI_CONTAINERID"] = id
        env["CNI_NETNS"] = "/run/netns/\(netns)"
        env["CNI_IFNAME"] = ifname
        env["CNI_PATH"] = Self.cniDir
        p.environment = env
        let inp = Pipe()
        let out = Pipe()
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

    @Test(.requiresIperf3) func theDaemonClassifiesAPodsProcessesByItsCNIClasses() throws {
        let s = try Scratch()
        defer { s.close() }
        let id = "ctr\(s.id)"
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

        let (added, addOut) = try netshapeCNI("ADD", id: id, netns: s.client, ifname: s.dev, config)
        defer { _ = try? netshapeCNI("DEL", id: id, netns: s.client, ifname: s.dev, config) }
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
        let inClass = (after[classid]?.bytes ?? 0) - (before[classid]?.bytes ?? 0)
        let bps = try goodput(json)
        print("pod process under the daemon, class from the CNI block: \(mbit(bps)) for 10mbit, \(inClass) bytes in it")
        #expect(inClass > 2_000_000, "the class counter moved")
        #expect(bps > 10e6 * 0.85 && bps < 10e6 * 1.05)
        #expect(d.text.contains("into \(name)/capped"), "the daemon classified it (on exec)")

        let (deleted, delOut) = try netshapeCNI("DEL", id: id, netns: s.client, ifname: s.dev, config)
        #expect(deleted == 0, "DEL: \(delOut)")
        #expect(!FileManager.default.fileExists(atPath: "/run/netshape/cni/\(name).json"), "DEL forgets the attachment")
        try waitFor(seconds: 10, "the daemon to stop following the pod") {
            d.text.contains("CNI attachment \(name) is gone")
        }
    }
}
