import Logging
import NetshapeCore
import NetshapeEngine
import NetshapeKernel
import NetshapePolicy
import ServiceLifecycle
import Synchronization
import UnixSignals

/// A value handed to a thread that owns it from then on.
final class UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// `netshape daemon POLICY`: apply, then keep the machine converged.
public struct Daemon {
    public let policy: Policy
    public let path: String
    public let interval: Double
    /// Keep cgroup migrations fast (see `FastMigrations`).
    public let favorDynmods: Bool
    public let logger: Logger
    /// Rebuilds a recorded CNI attachment's policy (NetshapeCNI decodes the network config; the CLI
    /// passes its function in, so the daemon does not depend on CNI); nil: pods not followed.
    public let cniPolicy: (@Sendable (CNIAttachment) throws -> Policy)?
    /// `HOST:PORT` to serve Prometheus metrics on; nil = no endpoint.
    public let metrics: String?

    public init(
        policy: Policy, path: String, interval: Double, favorDynmods: Bool = true, metrics: String? = nil,
        cniPolicy: (@Sendable (CNIAttachment) throws -> Policy)? = nil, logger: Logger
    ) {
        self.policy = policy
        self.path = path
        self.interval = interval
        self.favorDynmods = favorDynmods
        self.cniPolicy = cniPolicy
        self.metrics = metrics
        self.logger = logger
    }

    /// Runs until SIGTERM or SIGINT; the shaping stays in place (it is kernel state; `reset` removes it).
    public func run() async throws {
        let kernel = LinuxKernel(settings: policy.settings)
        var dynmods: FastMigrations?
        if favorDynmods {
            do {
                dynmods = try FastMigrations.enable(stateDirectory: kernel.state.directory)
                if let d = dynmods {
                    logger.notice(
                        "cgroup migrations in fast mode (favordynmods hierarchy at \(d.mountPoint)); --no-favor-dynmods turns this off"
                    )
                } else if FastMigrations.active {
                    logger.info("cgroup migrations already in fast mode (a favordynmods hierarchy is mounted)")
                }
            } catch {
                let e = (error as? KernelError)?.errno
                let why =
                    e == KernelErrno.EACCES || e == KernelErrno.EPERM
                    ? "mounting a cgroup hierarchy was refused (needs CAP_SYS_ADMIN in the initial user namespace)"
                    : e == KernelErrno.EINVAL ? "favordynmods needs Linux 6.0" : "the mount failed"
                logger.warning(
                    "cannot enable fast cgroup migrations (\(why)): \(error); moves after idle periods will take an RCU grace period"
                )
            }
        }
        defer { dynmods?.disable() }
        var endpoint: MetricsService?
        var health = DaemonHealth.off
        if let address = metrics {
            (endpoint, health) = try MetricsService.make(address: address, logger: logger)
        }
        let io = DaemonIO.system
        let liveness = Liveness(clock: io.clock)
        let classifier = ExecClassifier(logger: logger, health: health, io: io)
        let core = DaemonCore(
            policy: policy, path: path, engine: Engine(kernel: kernel, logger: logger),
            state: kernel.state, classifier: classifier, io: io, logger: logger)
        if let f = cniPolicy { await core.follow(CNIAttachments(store: io.attachments, policy: f)) }
        // SIGHUP's default action ends the process: trapped before anything says the daemon is up.
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        let report = try await core.reconcile("start")
        logger.notice("applied \(path): \(report.performed.count) change(s); watching for new processes")
        // A new service: one line here (see DaemonContext.swift).
        let context = DaemonContext(core: core, liveness: liveness, logger: logger)
        var services: [any Service] = [
            ProcEventService(context: context),
            ReconcileService(context: context, interval: interval),
            ReloadService(context: context, hangups: hangups),
            ContainerEventService(context: context),
            Cgroup2WatchService(context: context),
        ]
        if var e = endpoint {
            e.liveness = liveness
            services.append(e)
        }
        if let usec = SystemdNotify.watchdogMicroseconds {
            services.append(WatchdogService(context: context, microseconds: usec))
        }
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        io.notifier.send("READY=1\nSTATUS=shaping \(policy.namespaces.count) namespace(s)")
        try await group.run()
        io.notifier.send("STOPPING=1")
        logger.notice("stopped; the shaping stays in place (netshape reset removes it)")
    }
}
