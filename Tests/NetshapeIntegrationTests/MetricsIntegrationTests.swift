import Foundation
import NetshapeTestClients
import Testing

/// Issue 17: the daemon's /metrics endpoint and `status --watch`, against the real kernel. Part of
/// the serialized suite.
extension ApplyIntegrationTests {
    /// `netshape daemon POLICY --metrics 127.0.0.1:PORT`, logging to a file.
    final class MetricsDaemon {
        let process = Process()
        let log: URL
        /// Below the kernel's ephemeral range (32768-60999), where no outgoing connection's local
        /// port can be holding it.
        let port = UInt16.random(in: 20000..<32768)

        init(policy: String, dir: URL) throws {
            log = dir.appendingPathComponent("metrics-daemon.log")
            FileManager.default.createFile(atPath: log.path, contents: nil)
            process.executableURL = URL(fileURLWithPath: netshapeBinary)
            process.arguments = ["daemon", policy, "--interval", "1", "--verbose", "--metrics", "127.0.0.1:\(port)"]
            let handle = try FileHandle(forWritingTo: log)
            process.standardOutput = handle
            process.standardError = handle
            try process.run()
            try waitFor(seconds: 20, "the daemon to serve metrics") {
                self.text.contains("serving Prometheus metrics") && self.text.contains("listening for exec events")
            }
        }

        var text: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

        func stop() -> Int32 {
            guard process.isRunning else { return process.terminationStatus }
            process.terminate()
            process.waitUntilExit()
            return process.terminationStatus
        }
        deinit { if process.isRunning { process.terminate(); process.waitUntilExit() } }
    }

    /// GET /metrics; returns the body, failing on anything but 200.
    func scrape(_ port: UInt16) throws -> String {
        let c = try LoopbackClient(port: port)
        c.send(Array("GET /metrics HTTP/1.0\r\n\r\n".utf8))
        let r = c.readAll()
        guard r.hasPrefix("HTTP/1.1 200"), let split = r.range(of: "\r\n\r\n") else {
            throw TestFailure("scrape answered: \(r.prefix(200))")
        }
        return String(r[split.upperBound...])
    }

    /// The value of the sample `name{labels}`.
    func sample(_ body: String, _ series: String) -> Double? {
        body.split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap { Double($0.split(separator: " ")[1]) }
    }

    @Test(.requiresIperf3) func theMetricsFollowIperfTraffic() throws {
        let s = try Scratch()
        defer { s.close() }
        let policy = try s.policy(Self.daemonPolicy)
        let d = try MetricsDaemon(policy: policy, dir: s.dir)
        let labels = "{class=\"capped\",namespace=\"\(s.client)\"}"
        let before = try scrape(d.port)
        let bytes0 = try #require(sample(before, "netshape_class_sent_bytes_total" + labels), "\(before.prefix(2000))")
        #expect(sample(before, "netshape_class_rate_bytes" + labels) == 10e6 / 8)
        #expect(sample(before, "netshape_class_ceil_bytes" + labels) == 10e6 / 8)
        #expect(sample(before, "netshape_class_processes" + labels) == 0)
        #expect(sample(before, "netshape_namespace_up{namespace=\"\(s.client)\"}") == 1)
        #expect((sample(before, "netshape_reconcile_total{result=\"ok\"}") ?? 0) >= 1)
        let stamp = try #require(sample(before, "netshape_last_apply_timestamp_seconds"))
        #expect(abs(stamp - Date().timeIntervalSince1970) < 10)
        #expect(before.contains("netshape_reconcile_duration_seconds_bucket{le=\""))

        let tcBefore = try s.classes()
        try s.iperfServer(port: 5370)
        let bin = try namedIperf(s)
        let r = try run([ip, "netns", "exec", s.client, bin, "-c", s.serverIP, "-p", "5370", "-t", "3", "-J"])
        let tcAfter = try s.classes()
        let after = try scrape(d.port)
        let bytes1 = try #require(sample(after, "netshape_class_sent_bytes_total" + labels))
        let capped = try #require(try classidOf("capped", s))
        let tcDelta = Double((tcAfter[capped]?.bytes ?? 0) - (tcBefore[capped]?.bytes ?? 0))
        let bps = try goodput(r.out)
        print(
            "metrics: capped class sent \(Int(bytes1 - bytes0)) bytes by the endpoint, \(Int(tcDelta)) by tc; iperf3 \(mbit(bps))"
        )
        #expect(bytes1 - bytes0 > 3 * 10e6 / 8 * 0.8, "about 3 s at 10mbit went through the class")
        // Taken a moment after tc's dump, the endpoint's figure is at least tc's and not far above.
        #expect(bytes1 - bytes0 >= tcDelta && bytes1 - bytes0 < tcDelta * 1.05 + 20000)
        #expect((sample(after, "netshape_class_sent_packets_total" + labels) ?? 0) > 1000)
        #expect((sample(after, "netshape_class_overlimits_total" + labels) ?? 0) > 0)
        #expect((sample(after, "netshape_classified_processes_total") ?? 0) >= 1)
        #expect(sample(after, "netshape_exec_events_lost_total") == 0)

        // A reload that changes a rate in place keeps the counters (no reset, never lower).
        let text = try String(contentsOfFile: policy, encoding: .utf8)
        try text.replacingOccurrences(of: "ceil = \"10mbit\"", with: "ceil = \"12mbit\"").write(
            toFile: policy, atomically: true, encoding: .utf8)
        kill(d.process.processIdentifier, SIGHUP)
        try waitFor(seconds: 10, "the reload") { d.text.contains("reloaded") }
        // The reload counter is incremented after "reloaded" is logged: scrape until it is.
        var reloaded = ""
        try waitFor(seconds: 5, "the reload to be counted") {
            reloaded = (try? self.scrape(d.port)) ?? ""
            return (sample(reloaded, "netshape_policy_reload_total{result=\"ok\"}") ?? 0) >= 1
        }
        #expect(sample(reloaded, "netshape_class_ceil_bytes" + labels) == 12e6 / 8)
        #expect((sample(reloaded, "netshape_class_sent_bytes_total" + labels) ?? 0) >= bytes1)
        #expect(sample(reloaded, "netshape_policy_reload_total{result=\"ok\"}") == 1)
        #expect(d.stop() == 0)
    }

    @Test func aSlowOrFloodingClientStallsNeitherTheDaemonNorOtherScrapes() throws {
        let s = try Scratch()
        defer { s.close() }
        let policy = try s.policy(
            Self.daemonPolicy.replacingOccurrences(
                of: "match.comm = [\"nsdiperf\"]", with: "match.comm = [\"nsdsleep\"]"))
        let d = try MetricsDaemon(policy: policy, dir: s.dir)
        // One byte a second, on its own thread for the whole test.
        let slow = try LoopbackClient(port: d.port, timeoutSeconds: 20)
        let done = DispatchSemaphore(value: 0)
        final class Result: @unchecked Sendable { var text = "" }
        let slowAnswer = Result()
        Thread {
            for b in "GET /metrics HTTP/1.1\r\nHost: x\r\n".utf8 {
                if slow.send([b]) == 0 { break }
                sleep(1)
            }
            slowAnswer.text = slow.readAll()
            done.signal()
        }.start()
        // A megabyte of headers from another client.
        let flood = try LoopbackClient(port: d.port)
        var big = Array("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Filler: ".utf8)
        big += Array(repeating: UInt8(ascii: "a"), count: 1 << 20)
        let sent = flood.send(big)
        let floodAnswer = flood.readAll()
        print("1 MiB header flood: \(sent) bytes accepted, answer \(floodAnswer.prefix(40).debugDescription)")
        #expect(floodAnswer.isEmpty || floodAnswer.hasPrefix("HTTP/1.1 431"))
        // Meanwhile other scrapes are answered at once, and the daemon still classifies new processes.
        for _ in 0..<3 {
            let t = Date()
            _ = try scrape(d.port)
            #expect(Date().timeIntervalSince(t) < 1, "a scrape waited behind the slow client")
        }
        let sleeper = s.dir.appendingPathComponent("nsdsleep").path
        try FileManager.default.copyItem(atPath: "/bin/sleep", toPath: sleeper)
        let p = try background(in: s.client, [sleeper, "30"])
        defer { p.stopNow() }
        let procs = "/sys/fs/cgroup/net_cls/netshape/\(s.client)/capped/cgroup.procs"
        try waitFor(seconds: 5, "the new process to be classified while the slow client is connected") {
            ((try? String(contentsOfFile: procs, encoding: .utf8)) ?? "").contains { $0.isNumber }
        }
        let body = try scrape(d.port)
        #expect(sample(body, "netshape_class_processes{class=\"capped\",namespace=\"\(s.client)\"}") == 1)
        // The slow client itself runs into the read deadline (5 s), well before it finishes.
        #expect(done.wait(timeout: .now() + 15) == .success)
        #expect(slowAnswer.text.hasPrefix("HTTP/1.1 408"), "\(slowAnswer.text.prefix(60))")
        #expect(d.process.isRunning)
        #expect(d.stop() == 0)
    }

    /// tmux on its own socket, so nothing of anyone else's sessions is touched.
    struct Tmux {
        let socket = "nst-\(Scratch.newID())"
        let tmux = "/usr/bin/tmux"

        @discardableResult
        func callAsFunction(_ args: String...) throws -> String { try must([tmux, "-L", socket] + args) }
        func kill() { _ = try? run([tmux, "-L", socket, "kill-server"]) }

        /// Starts a detached session. Neither through `run` nor waited for: Foundation's wait
        /// for the tmux client lasts as long as the server it forks (seen: it returned only when
        /// the session ended), so the test polls for the session instead.
        func start(_ command: String) throws {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: tmux)
            p.arguments = ["-L", socket, "new-session", "-d", "-x", "120", "-y", "30", "/bin/sh", "-c", command]
            p.standardInput = FileHandle.nullDevice
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            try waitFor(seconds: 10, "the tmux session") {
                (try? run([tmux, "-L", socket, "has-session"]))?.status == 0
            }
        }
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/tmux"), "tmux is not installed"))
    func statusWatchRendersUnderTmuxAndRestoresTheTerminal() throws {
        let s = try Scratch()
        defer { s.close() }
        let policy = try s.policy(Self.daemonPolicy)
        try must([netshapeBinary, "apply", policy])
        try s.iperfServer(port: 5371)
        let bin = try namedIperf(s)
        // Sending until the test ends (killed by the defer): with a fixed few seconds, a loaded
        // machine started the watch after the flow had ended, and no rate ever showed.
        let traffic = try background(
            in: s.client,
            [netshapeBinary, "run", policy, "capped", "--", bin, "-c", s.serverIP, "-p", "5371", "-t", "120"])
        defer { traffic.stopNow() }
        let t = Tmux()
        defer { t.kill() }
        // The shell reports the exit status and whether the terminal is back in canonical mode;
        // the marker after stty is what the test waits for (EXIT= alone raced stty's output).
        let script =
            "\(netshapeBinary) status \(policy) --watch --interval 0.5; echo EXIT=$?; stty -a | tr ' ' '\\n' | grep -x -- '-\\?icanon'; echo TTY-CHECKED; sleep 30"
        try t.start(script)
        var screen = ""
        do {
            try waitFor(seconds: 15, "a rate in the watch view") {
                screen = (try? t("capture-pane", "-p")) ?? ""
                return screen.contains("capped") && screen.contains("mbit [█")
            }
        } catch {
            print("the last screen captured:\n\(screen)")
            throw error
        }
        print(screen)
        #expect(screen.contains("netshape status --watch"))
        #expect(screen.contains("namespace \(s.client)"))
        #expect(screen.contains("10.0mbit/10.0mbit"))
        let row = try #require(screen.split(separator: "\n").first { $0.hasPrefix("  capped") })
        #expect(row.contains { "▁▂▃▄▅▆▇█".contains($0) })
        try t("send-keys", "q")
        try waitFor(seconds: 5, "the watch to quit on q") {
            ((try? t("capture-pane", "-p")) ?? "").contains("TTY-CHECKED")
        }
        let after = try t("capture-pane", "-p")
        #expect(after.contains("EXIT=0"), "\(after)")
        #expect(after.split(separator: "\n").contains("icanon"), "the terminal is back in canonical mode: \(after)")
        #expect(!after.contains("netshape status --watch"), "the alternate screen was left")

        // SIGTERM from outside ends it the same way.
        t.kill()
        let t2 = Tmux()
        defer { t2.kill() }
        try t2.start(script)
        try waitFor(seconds: 15, "the watch view") { ((try? t2("capture-pane", "-p")) ?? "").contains("capped") }
        let shell = try t2("display-message", "-p", "#{pane_pid}").trimmingCharacters(in: .whitespacesAndNewlines)
        let children = try String(contentsOfFile: "/proc/\(shell)/task/\(shell)/children", encoding: .utf8)
        let watch = try #require(Int32(children.split(separator: " ").first ?? ""))
        kill(watch, SIGTERM)
        try waitFor(seconds: 5, "the watch to quit on SIGTERM") {
            ((try? t2("capture-pane", "-p")) ?? "").contains("TTY-CHECKED")
        }
        let afterTerm = try t2("capture-pane", "-p")
        #expect(afterTerm.contains("EXIT=0") && afterTerm.split(separator: "\n").contains("icanon"), "\(afterTerm)")
        _ = try cli("reset", policy)
    }
}
