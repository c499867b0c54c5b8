import Logging
import ServiceLifecycle

/// What every service is built from. A new service stores a context (and what is its own), is one
/// line in `Daemon.run`'s list, and gets `core`, `io`, `liveness`, `logger` from `DaemonService`.
/// A service with a thread of its own registers a heartbeat with `liveness`, so the watchdog stops
/// pinging when that thread stops.
struct DaemonContext: Sendable {
    let core: DaemonCore
    let liveness: Liveness
    let logger: Logger
}

protocol DaemonService: Service {
    var context: DaemonContext { get }
}

extension DaemonService {
    var core: DaemonCore { context.core }
    var io: DaemonIO { context.core.io }
    var classifier: ExecClassifier { context.core.classifier }
    var liveness: Liveness { context.liveness }
    var logger: Logger { context.logger }
}
