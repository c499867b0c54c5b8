import Testing

@testable import NetshapeEngine
@testable import NetshapeMetrics

func cls(_ name: String, bytes: UInt64, packets: UInt64 = 0, drops: UInt64 = 0, present: Bool = true) -> ClassStatus {
    ClassStatus(
        name: name, classid: "1:10", rate: 8_000_000, ceil: 16_000_000, priority: 0, leaf: "fq_codel", bytes: bytes,
        packets: packets, drops: drops, overlimits: 3, backlog: 1514, throughput: nil, pids: [10, 11],
        isDefault: false, present: present)
}

func report(_ classes: [ClassStatus], ingressBytes: UInt64? = nil, problem: String? = nil) -> StatusReport {
    StatusReport(
        namespaces: [
            NamespaceStatus(
                name: "web", netns: "/run/netns/web", device: "eth0", handle: "1:", classifier: "cgroup",
                egress: 100_000_000, ingress: ingressBytes == nil ? nil : 50_000_000, applied: true, problem: problem,
                classes: classes,
                ingressShaping: ingressBytes.map {
                    IngressStatus(
                        device: "veth1", placement: "peer", rate: 50_000_000, bytes: $0, packets: 1, drops: 2,
                        throughput: nil, applied: true)
                })
        ], interval: 0)
}

/// The value of the one sample whose line starts with `series` followed by a space.
func value(_ text: String, _ series: String) -> Double? {
    let lines = text.split(separator: "\n").filter { $0.hasPrefix(series + " ") }
    guard lines.count == 1, let v = lines[0].split(separator: " ").last else { return nil }
    return Double(v)
}

@Suite struct ExpositionTests {
    let bulk = #"{class="bulk",namespace="web"}"#

    @Test func everyClassSeriesWithLabels() {
        let m = ShapingMetrics()
        m.update(report([cls("bulk", bytes: 1000, packets: 7, drops: 1)], ingressBytes: 500))
        let text = String(decoding: m.emit(), as: UTF8.self)
        #expect(value(text, "netshape_class_sent_bytes_total" + bulk) == 1000)
        #expect(value(text, "netshape_class_sent_packets_total" + bulk) == 7)
        #expect(value(text, "netshape_class_dropped_packets_total" + bulk) == 1)
        #expect(value(text, "netshape_class_overlimits_total" + bulk) == 3)
        #expect(value(text, "netshape_class_rate_bytes" + bulk) == 1_000_000)
        #expect(value(text, "netshape_class_ceil_bytes" + bulk) == 2_000_000)
        #expect(value(text, "netshape_class_backlog_bytes" + bulk) == 1514)
        #expect(value(text, "netshape_class_processes" + bulk) == 2)
        #expect(value(text, #"netshape_ingress_sent_bytes_total{namespace="web"}"#) == 500)
        #expect(value(text, #"netshape_ingress_dropped_packets_total{namespace="web"}"#) == 2)
        #expect(value(text, #"netshape_namespace_up{namespace="web"}"#) == 1)
        #expect(text.contains("# TYPE netshape_class_sent_bytes_total counter"))
        #expect(text.contains("# TYPE netshape_class_rate_bytes gauge"))
        #expect(text.contains("# HELP netshape_class_sent_bytes_total "))
    }

    @Test func countersStayMonotonic() {
        let m = ShapingMetrics()
        let series = "netshape_class_sent_bytes_total" + bulk
        m.update(report([cls("bulk", bytes: 1000)]))
        m.update(report([cls("bulk", bytes: 1500)]))
        #expect(value(String(decoding: m.emit(), as: UTF8.self), series) == 1500)
        // Recreated: the kernel restarts at zero; the exported counter goes on from where it was.
        m.update(report([cls("bulk", bytes: 200)]))
        #expect(value(String(decoding: m.emit(), as: UTF8.self), series) == 1700)
        // Missing from the kernel for a while: the series keeps its value, it does not drop.
        m.update(report([cls("bulk", bytes: 0, present: false)]))
        #expect(value(String(decoding: m.emit(), as: UTF8.self), series) == 1700)
        m.update(report([cls("bulk", bytes: 300)]))
        #expect(value(String(decoding: m.emit(), as: UTF8.self), series) == 1800)
    }

    @Test func removedClassesLeave() {
        let m = ShapingMetrics()
        m.update(report([cls("bulk", bytes: 1), cls("web", bytes: 2)]))
        var text = String(decoding: m.emit(), as: UTF8.self)
        #expect(text.contains(#"class="web""#))
        m.update(report([cls("bulk", bytes: 1)]))
        text = String(decoding: m.emit(), as: UTF8.self)
        #expect(!text.contains(#"class="web""#))
        #expect(text.contains(#"class="bulk""#))
        m.update(report([], problem: "namespace is gone"))
        text = String(decoding: m.emit(), as: UTF8.self)
        #expect(!text.contains(#"class="bulk""#))
        #expect(value(text, #"netshape_namespace_up{namespace="web"}"#) == 0)
    }

    @Test func labelValuesEscaped() {
        let m = ShapingMetrics()
        m.update(report([cls(#"a"b\c"#, bytes: 5)]))
        let text = String(decoding: m.emit(), as: UTF8.self)
        #expect(text.contains(#"class="a\"b\\c""#))
    }
}
