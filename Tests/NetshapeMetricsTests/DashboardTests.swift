import Foundation
import NetshapeCore
import Prometheus
import Testing

@testable import NetshapeDaemon
@testable import NetshapeMetrics

@Suite struct DashboardTests {
    /// Everything the daemon can expose, with every kind of series present once.
    func exposition() -> String {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets["netshape_reconcile_duration_seconds"] = DaemonHealth.durationBuckets
        let health = DaemonHealth(factory: factory)
        health.reconciled(ok: true, since: .now, moved: 2, policy: Policy(namespaces: [], source: "p.toml"))
        health.reconciled(ok: false, since: .now, moved: 0, policy: Policy(namespaces: [], source: "p.toml"))
        health.reloaded(ok: true)
        health.reloaded(ok: false)
        health.eventsLost.increment()
        let shaping = ShapingMetrics(registry: registry)
        shaping.update(report([cls("bulk", bytes: 10)], ingressBytes: 5))
        return String(decoding: shaping.emit(), as: UTF8.self)
    }

    @Test func healthSeries() {
        let text = exposition()
        #expect(value(text, #"netshape_reconcile_total{result="ok"}"#) == 1)
        #expect(value(text, #"netshape_reconcile_total{result="error"}"#) == 1)
        #expect(value(text, #"netshape_policy_reload_total{result="ok"}"#) == 1)
        #expect(value(text, #"netshape_policy_reload_total{result="error"}"#) == 1)
        #expect(value(text, "netshape_classified_processes_total") == 2)
        #expect(value(text, "netshape_exec_events_lost_total") == 1)
        #expect(value(text, "netshape_reconcile_duration_seconds_count") == 2)
        #expect(value(text, #"netshape_reconcile_duration_seconds_bucket{le="0.001"}"#) == 2)
        #expect(text.contains("# TYPE netshape_reconcile_duration_seconds histogram"))
        let stamp = value(text, "netshape_last_apply_timestamp_seconds") ?? 0
        #expect(abs(stamp - Date().timeIntervalSince1970) < 60)
    }

    /// Every series the Grafana dashboard queries is one the daemon exposes.
    @Test func dashboardQueriesExistingSeries() throws {
        let top = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let json = try String(contentsOf: top.appendingPathComponent("deploy/grafana/netshape.json"), encoding: .utf8)
        let exposed = Set(
            exposition().split(separator: "\n").filter { $0.hasPrefix("# TYPE ") }.map {
                String($0.split(separator: " ")[2])
            })
        var used = Set<String>()
        var rest = Substring(json)
        while let r = rest.range(of: "netshape_") {
            let name = rest[r.lowerBound...].prefix { $0.isLetter || $0 == "_" }
            used.insert(String(name))
            rest = rest[name.endIndex...]
        }
        used = Set(used.map { $0.hasSuffix("_bucket") ? String($0.dropLast(7)) : $0 })
        #expect(used.count >= 12)
        #expect(used.subtracting(exposed).isEmpty, "the dashboard queries unknown series: \(used.subtracting(exposed))")
    }
}
