import Logging
import NetshapeCore
import NetshapeEngine
import NetshapeKernel
import NetshapePolicy
import ServiceLifecycle
import Synchronization

/// Pings systemd's watchdog at half its interval while the core answers.
struct WatchdogService: Service {
    let core: DaemonCore
    let microseconds: UInt64

    func run() async throws {
        let period = Duration.microseconds(Int64(microseconds / 2))
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            _ = await core.waiting  // the actor answers: the daemon is not wedged
            SystemdNotify.send("WATCHDOG=1")
            try? await Task.sleep(for: period)
        }
    }
}
