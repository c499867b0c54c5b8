import CoreMetrics
import Logging
import NetshapeCore
import NetshapeEngine
import NetshapeKernel
import NetshapeMetrics
import Prometheus
import ServiceLifecycle
import Synchronization

/// The daemon's own health series, through swift-metrics so the daemon only speaks the metrics
/// API; without `--metrics` they go to the no-op factory and cost nothing.
public final class DaemonHealth: Sendable {
    let classified: CoreMetrics.Counter
    let eventsLost: CoreMetrics.Counter
    /// Failed reads of the exec event socket (each one backed off; see `ExecEventPump`).
    let eventErrors: CoreMetrics.Counter
    let reconcileOK: CoreMetrics.Counter
    let reconcileFailed: CoreMetrics.Counter
    let reconcileDuration: CoreMetrics.Timer
    let lastApply: CoreMetrics.Gauge
    let reloadOK: CoreMetrics.Counter
    let reloadFailed: CoreMetrics.Counter
    /// The policy in force after the last successful reconcile: what a scrape reads the kernel for.
    let policy = Mutex<Policy?>(nil)

    public static let durationBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
        .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5),
        .seconds(10),
    ]

    public init(factory: any MetricsFactory) {
        classified = Counter(label: "netshape_classified_processes_total", factory: factory)
        eventsLost = Counter(label: "netshape_exec_events_lost_total", factory: factory)
        eventErrors = Counter(label: "netshape_exec_event_errors_total", factory: factory)
        reconcileOK = Counter(label: "netshape_reconcile_total", dimensions: [("result", "ok")], factory: factory)
        reconcileFailed = Counter(
            label: "netshape_reconcile_total", dimensions: [("result", "error")], factory: factory)
        reconcileDuration = Timer(label: "netshape_reconcile_duration_seconds", factory: factory)
        lastApply = Gauge(label: "netshape_last_apply_timestamp_seconds", factory: factory)
        reloadOK = Counter(label: "netshape_policy_reload_total", dimensions: [("result", "ok")], factory: factory)
        reloadFailed = Counter(
            label: "netshape_policy_reload_total", dimensions: [("result", "error")], factory: factory)
    }

    public static let off = DaemonHealth(factory: NOOPMetricsHandler.instance)

    /// One reconcile's outcome; `moved` is how many processes it classified from /proc.
    func reconciled(ok: Bool, since start: ContinuousClock.Instant, moved: Int, policy: Policy) {
        let d = ContinuousClock.now - start
        reconcileDuration.recordNanoseconds(
            d.components.seconds * 1_000_000_000 + d.components.attoseconds / 1_000_000_000)
        if ok {
            reconcileOK.increment()
            lastApply.record(Poller.realtimeSeconds())
            self.policy.withLock { $0 = policy }
        } else {
            reconcileFailed.increment()
        }
        if moved > 0 { classified.increment(by: moved) }
    }

    func reloaded(ok: Bool) { (ok ? reloadOK : reloadFailed).increment() }
}

/// `--metrics HOST:PORT`: the endpoint's thread, started and stopped with the daemon.
struct MetricsService: Service {
    let server: MetricsHTTPServer
    let logger: Logger
    /// Where the endpoint thread reports in, so the watchdog stops pinging when it wedges.
    var liveness: Liveness?

    /// Binds now (a taken port fails the daemon's start) and wires the scrape: a fresh kernel
    /// handle per scrape, so namespaces that were recreated are never read through stale handles,
    /// and the daemon's own netlink sockets are never shared with this thread.
    static func make(address: String, logger: Logger) throws -> (MetricsService, DaemonHealth) {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets["netshape_reconcile_duration_seconds"] = DaemonHealth.durationBuckets
        let health = DaemonHealth(factory: factory)
        let shaping = ShapingMetrics(registry: registry)
        let quiet = Logger(label: "netshape-metrics", factory: { _ in SwiftLogNoOpLogHandler() })
        let server = try MetricsHTTPServer(address: address) {
            let start = ContinuousClock.now
            if let policy = health.policy.withLock({ $0 }) {
                do {
                    let engine = Engine(kernel: LinuxKernel(settings: policy.settings), logger: quiet)
                    shaping.update(try engine.status(policy, interval: 0) { _ in })
                } catch {
                    shaping.scrapeErrors.increment()
                    logger.warning("metrics scrape could not read the kernel: \(error)")
                }
            }
            let d = ContinuousClock.now - start
            shaping.scrapeDuration.set(to: Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18)
            return shaping.emit()
        }
        return (MetricsService(server: server, logger: logger), health)
    }

    func run() async throws {
        let heartbeat = liveness?.register("metrics endpoint")
        try server.start { problem in
            if let problem { heartbeat?.failing(problem) } else { heartbeat?.alive() }
        }
        logger.notice("serving Prometheus metrics on http://\(server.address)/metrics")
        // Wait for shutdown; the endpoint thread needs nothing from this task meanwhile.
        try? await gracefulShutdown()
        server.shutdown()
    }
}
