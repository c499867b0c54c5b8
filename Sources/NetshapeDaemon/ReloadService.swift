import Logging
import NetshapeCore
import NetshapeEngine
import NetshapeKernel
import NetshapePolicy
import ServiceLifecycle
import Synchronization
import UnixSignals

/// SIGHUP reloads the policy; systemd hears RELOADING=1 then READY=1.
struct ReloadService: DaemonService {
    let context: DaemonContext
    /// Trapped by `Daemon.run` before its first apply: a SIGHUP that arrives before this service
    /// runs (right after READY=1, or the log's "listening") waits here instead of ending the daemon.
    let hangups: UnixSignalsSequence

    func run() async throws {
        for await _ in hangups.cancelOnGracefulShutdown() {
            let usec = io.clock.monotonicNanoseconds() / 1000
            io.notifier.send("RELOADING=1\nMONOTONIC_USEC=\(usec)")
            logger.notice("SIGHUP: reloading")
            core.classifier.health.reloaded(ok: await core.reload())
            io.notifier.send("READY=1")
        }
    }
}
