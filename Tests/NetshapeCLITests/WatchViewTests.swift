import Testing

@testable import NetshapeCLI
@testable import NetshapeEngine

func watchReport(bulk: UInt64, ingress: UInt64 = 0, drops: UInt64 = 0) -> StatusReport {
    let c = ClassStatus(
        name: "bulk", classid: "1:10", rate: 10_000_000, ceil: 20_000_000, priority: 0, leaf: "fq_codel", bytes: bulk,
        packets: 0, drops: drops, overlimits: 0, backlog: 3000, throughput: nil, pids: [1, 2, 3], isDefault: true,
        present: true)
    let gone = ClassStatus(
        name: "gone", classid: "1:11", rate: 1000, ceil: 1000, priority: 0, leaf: "-", bytes: 0, packets: 0, drops: 0,
        overlimits: 0, throughput: nil, pids: [], isDefault: false, present: false)
    return StatusReport(
        namespaces: [
            NamespaceStatus(
                name: "web", netns: "/run/netns/web", device: "eth0", handle: "1:", classifier: "cgroup",
                egress: 100_000_000, ingress: 40_000_000, applied: true, problem: nil, classes: [c, gone],
                ingressShaping: IngressStatus(
                    device: "vethpeer", placement: "peer", rate: 40_000_000, bytes: ingress, packets: 0, drops: 4,
                    throughput: nil, applied: true)),
            NamespaceStatus(
                name: "db", netns: "/run/netns/db", device: "?", handle: "2:", classifier: "none", egress: 1,
                ingress: nil, applied: false, problem: "network namespace /run/netns/db does not exist", classes: [],
                ingressShaping: nil),
        ], interval: 0)
}

@Suite struct WatchViewTests {
    @Test func ratesFromCounterDeltas() {
        var m = WatchModel(interval: 1)
        #expect(m.capacity == 60)
        m.add(watchReport(bulk: 0), at: 0)
        #expect(m.now("web/bulk") == nil)
        m.add(watchReport(bulk: 1_250_000, ingress: 500_000), at: 1)
        #expect(m.now("web/bulk") == 10_000_000)
        #expect(m.now(WatchModel.ingressKey("web")) == 4_000_000)
        m.add(watchReport(bulk: 1_250_000 + 625_000), at: 2)
        #expect(m.now("web/bulk") == 5_000_000)
        // A recreated class counts from zero: no negative or huge rate.
        m.add(watchReport(bulk: 10), at: 3)
        #expect(m.now("web/bulk") == 0)
        for t in 4..<100 { m.add(watchReport(bulk: UInt64(t) * 1000), at: Double(t)) }
        #expect(m.series["web/bulk"]?.rates.count == 60)
    }

    @Test func barAndSparkline() {
        #expect(WatchView.bar(0, of: 100, width: 10) == "··········")
        #expect(WatchView.bar(100, of: 100, width: 10) == "██████████")
        #expect(WatchView.bar(200, of: 100, width: 4) == "████")
        #expect(WatchView.bar(50, of: 100, width: 4) == "██··")
        #expect(WatchView.bar(55, of: 100, width: 10) == "█████▌····")
        #expect(WatchView.bar(10, of: 100, width: 10, mark: 50) == "█····|····")
        #expect(WatchView.sparkline([0, 50, 100, 200], full: 100, width: 6) == "   ▄██")
        #expect(WatchView.sparkline([1, 2, 3], full: 0, width: 2).count == 2)
        // A minute (60 samples) in 6 columns: 10 samples each, averaged; 30 samples fill the right half.
        let ramp = (0..<60).map { Double($0 < 30 ? 0 : 100) }
        #expect(WatchView.sparkline(ramp, full: 100, width: 6, span: 60) == "   ███")
        #expect(WatchView.sparkline(Array(repeating: 50, count: 30), full: 100, width: 6, span: 60) == "   ▄▄▄")
        #expect(WatchView.sparkline([100, 0, 100, 0], full: 100, width: 2, span: 4) == "▄▄")
        #expect(WatchView.rate(12_345_678) == "12.3mbit")
        #expect(WatchView.rate(999) == "999bit")
        #expect(WatchView.rate(1_500_000_000) == "1.5gbit")
        #expect(WatchView.rate(250_000_000) == "250mbit")
    }

    @Test func screenFitsAndShowsEverything() {
        var m = WatchModel(interval: 1)
        m.add(watchReport(bulk: 0), at: 0)
        m.add(watchReport(bulk: 1_250_000, ingress: 500_000, drops: 9), at: 1)
        let rows = WatchView.screen(m, title: "p.toml", width: 100, height: 40)
        #expect(rows.allSatisfy { $0.count <= 100 })
        let text = rows.joined(separator: "\n")
        #expect(text.contains("namespace web  dev eth0  egress 100mbit  ingress 40mbit"))
        let bulk = try? #require(rows.first { $0.hasPrefix("  bulk *") })
        #expect(bulk?.contains("10.0mbit") == true)
        #expect(bulk?.contains("10.0mbit/20.0mbit") == true)
        #expect(bulk?.contains("█████") == true)
        #expect(bulk?.hasSuffix("      9    2.9KiB     3") == true, "\(bulk ?? "")")
        #expect(text.contains("gone"))
        #expect(text.contains("missing from the kernel"))
        #expect(rows.contains { $0.hasPrefix("  ingress") && $0.contains("4.0mbit") && $0.contains("on vethpeer") })
        #expect(text.contains("namespace db: network namespace /run/netns/db does not exist"))
        let small = WatchView.screen(m, title: "p.toml", width: 60, height: 5)
        #expect(small.count == 5 && small.allSatisfy { $0.count <= 60 })
        #expect(small.last?.hasPrefix("…") == true)
        let frame = WatchView.frame(["a", "b"])
        #expect(frame == "\u{1B}[Ha\u{1B}[K\r\nb\u{1B}[K\u{1B}[J")
    }

    @Test func plainLines() {
        var m = WatchModel(interval: 1)
        m.add(watchReport(bulk: 0), at: 0)
        m.add(watchReport(bulk: 1_250_000), at: 1)
        let lines = WatchView.lines(m, elapsed: 1)
        #expect(lines.contains("t=1.0s web/bulk now=10.0mbit rate=10.0mbit ceil=20.0mbit drops=0 backlog=3000 procs=3"))
        #expect(lines.contains { $0.hasPrefix("t=1.0s web/ingress now=0bit") })
        #expect(lines.contains("t=1.0s db: network namespace /run/netns/db does not exist"))
        #expect(!lines.joined().contains("\u{1B}"))
    }

    @Test func watchFlags() throws {
        let cmd = try #require(try Netshape.parseAsRoot(["status", "p.toml", "--watch", "--interval", "2"]) as? Status)
        #expect(cmd.watch && cmd.interval == 2)
        #expect(throws: (any Error).self) { try Netshape.parseAsRoot(["status", "--watch", "--json"]) }
        #expect(throws: (any Error).self) { try Netshape.parseAsRoot(["status", "--watch", "--interval", "0.1"]) }
        let d = try #require(
            try Netshape.parseAsRoot(["daemon", "p.toml", "--metrics", "127.0.0.1:9477"]) as? DaemonCommand)
        #expect(d.metrics == "127.0.0.1:9477")
        #expect(throws: (any Error).self) { try Netshape.parseAsRoot(["daemon", "p.toml", "--metrics", "host:x"]) }
    }
}
