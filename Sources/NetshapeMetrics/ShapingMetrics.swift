import NetshapeEngine
import Prometheus
import Synchronization

/// The kernel-read series, refreshed from a `StatusReport` at every scrape, on a Prometheus
/// registry that also holds the daemon's own health series.
///
/// The kernel's counters are absolute and restart at zero when a class is deleted and created
/// again; the exported counters are advanced by the difference between two scrapes, so they only
/// ever grow: across reconciles, in-place changes (`tc class change` keeps the kernel's counters)
/// and recreations alike. What a recreated class carried between the last scrape and its
/// recreation is not counted, and a daemon restart starts every series afresh from the kernel.
public final class ShapingMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    let state = Mutex(State())

    struct Key: Hashable {
        var name: String
        var labels: [String]
    }

    struct State {
        var counters: [Key: (Counter, UInt64)] = [:]
        var gauges: [Key: Gauge] = [:]
        var seen: Set<Key> = []
    }

    static let classCounters: [(String, String, @Sendable (ClassStatus) -> UInt64)] = [
        ("netshape_class_sent_bytes_total", "Bytes the class has sent (HTB class counter).", { $0.bytes }),
        ("netshape_class_sent_packets_total", "Packets the class has sent.", { $0.packets }),
        (
            "netshape_class_dropped_packets_total", "Packets dropped in the class and its leaf queue.",
            { $0.drops }
        ),
        ("netshape_class_overlimits_total", "Times the class was over its rate or ceil.", { $0.overlimits }),
    ]

    static let classGauges: [(String, String, @Sendable (ClassStatus) -> Double)] = [
        ("netshape_class_rate_bytes", "Configured guaranteed rate, bytes per second.", { Double($0.rate / 8) }),
        ("netshape_class_ceil_bytes", "Configured ceiling, bytes per second.", { Double($0.ceil / 8) }),
        ("netshape_class_backlog_bytes", "Bytes queued in the class now.", { Double($0.backlog) }),
        ("netshape_class_processes", "Processes in the class's cgroup now.", { Double($0.pids.count) }),
    ]

    /// Scrapes whose kernel read failed (the series keep their last values then).
    public let scrapeErrors: Counter
    /// Wall time of the previous scrape's kernel read.
    public let scrapeDuration: Gauge

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        scrapeErrors = registry.makeCounter(
            descriptor: .netshape(
                "netshape_scrape_errors_total", "Scrapes whose kernel read failed (the series kept their last values).")
        )
        scrapeDuration = registry.makeGauge(
            descriptor: .netshape("netshape_scrape_duration_seconds", "Wall time of the previous scrape's kernel read.")
        )
    }

    /// Brings every kernel-read series up to `report`; series of classes and namespaces no longer
    /// in it are removed (they would otherwise report their last value forever).
    public func update(_ report: StatusReport) {
        state.withLock { s in
            s.seen = []
            for ns in report.namespaces {
                gauge(&s, "netshape_namespace_up", "1 when the namespace is there and shaped.", ["namespace": ns.name])
                    .set(to: ns.problem == nil && ns.applied ? 1.0 : 0.0)
                guard ns.problem == nil else { continue }
                // A class missing from the kernel keeps its counters (it may come back, see above);
                // only its gauges, which would report stale values, go.
                for c in ns.classes where !c.present {
                    for (name, _, _) in Self.classCounters {
                        s.seen.insert(key(name, ["namespace": ns.name, "class": c.name]).0)
                    }
                }
                for c in ns.classes where c.present {
                    let labels = ["namespace": ns.name, "class": c.name]
                    for (name, help, value) in Self.classCounters {
                        advance(&s, name, help, labels, value(c))
                    }
                    for (name, help, value) in Self.classGauges {
                        gauge(&s, name, help, labels).set(to: value(c))
                    }
                }
                if let i = ns.ingressShaping, i.applied {
                    let labels = ["namespace": ns.name]
                    advance(
                        &s, "netshape_ingress_sent_bytes_total", "Bytes the ingress shaper has passed.", labels, i.bytes
                    )
                    advance(
                        &s, "netshape_ingress_dropped_packets_total", "Packets the ingress shaper has dropped.", labels,
                        i.drops)
                    gauge(&s, "netshape_ingress_rate_bytes", "Configured ingress rate, bytes per second.", labels)
                        .set(to: Double(i.rate / 8))
                }
            }
            for (k, v) in s.counters where !s.seen.contains(k) {
                registry.unregisterCounter(v.0)
                s.counters[k] = nil
            }
            for (k, g) in s.gauges where !s.seen.contains(k) {
                registry.unregisterGauge(g)
                s.gauges[k] = nil
            }
        }
    }

    /// The text exposition of the whole registry.
    public func emit() -> [UInt8] { registry.emitToBuffer() }

    func key(_ name: String, _ labels: [String: String]) -> (Key, [(String, String)]) {
        let pairs = labels.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        return (Key(name: name, labels: pairs.flatMap { [$0.0, $0.1] }), pairs)
    }

    func gauge(_ s: inout State, _ name: String, _ help: String, _ labels: [String: String]) -> Gauge {
        let (k, pairs) = key(name, labels)
        s.seen.insert(k)
        if let g = s.gauges[k] { return g }
        let g = registry.makeGauge(descriptor: .netshape(name, help), labels: pairs)
        s.gauges[k] = g
        return g
    }

    func advance(_ s: inout State, _ name: String, _ help: String, _ labels: [String: String], _ value: UInt64) {
        let (k, pairs) = key(name, labels)
        s.seen.insert(k)
        guard let (c, last) = s.counters[k] else {
            let c = registry.makeCounter(descriptor: .netshape(name, help), labels: pairs)
            c.increment(by: Int64(clamping: value))
            s.counters[k] = (c, value)
            return
        }
        // Below the last reading: the kernel object was recreated and counts from zero again.
        let delta = value >= last ? value - last : value
        if delta > 0 { c.increment(by: Int64(clamping: delta)) }
        s.counters[k] = (c, value)
    }
}

extension MetricNameDescriptor {
    /// A series named in full (the names are the documented interface; no unit suffix is added).
    public static func netshape(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }
}
