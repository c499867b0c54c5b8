import Logging
import NetshapeKernel
import ServiceLifecycle
import Synchronization

/// What the watchdog asks before each ping: every service's thread reports in through its
/// `Heartbeat`, as alive or failing. A thread that has not reported within the window, or says
/// it is failing, holds the pings back, so systemd restarts a daemon whose exec thread spins on
/// an error instead of believing it healthy.
public final class Liveness: Sendable {
    struct Beat {
        var at: UInt64
        var problem: String?
    }
    let clock: any DaemonClock
    let beats = Mutex<[String: Beat]>([:])
    let lastProblem = Mutex<String?>(nil)

    public init(clock: any DaemonClock) { self.clock = clock }

    /// A heartbeat for the service `name`, alive from now on.
    public func register(_ name: String) -> Heartbeat {
        let now = clock.monotonicNanoseconds()
        beats.withLock { $0[name] = Beat(at: now) }
        return Heartbeat(name: name, liveness: self)
    }

    /// Why not every service is alive (nil when all are): one has not reported within
    /// `windowNanoseconds`, or reported a failure last. `changed` says whether that answer differs
    /// from the previous call's (the watchdog logs only changes).
    public func check(windowNanoseconds: UInt64) -> (problem: String?, changed: Bool) {
        let now = clock.monotonicNanoseconds()
        let problem = beats.withLock { beats -> String? in
            for (name, b) in beats.sorted(by: { $0.key < $1.key }) {
                if let p = b.problem { return "\(name): \(p)" }
                if now > b.at && now - b.at > windowNanoseconds {
                    return "\(name): no sign of life for \((now - b.at) / 1_000_000) ms"
                }
            }
            return nil
        }
        let changed = lastProblem.withLock { last in
            defer { last = problem }
            return last != problem
        }
        return (problem, changed)
    }
}

/// One service's reports to `Liveness`.
public struct Heartbeat: Sendable {
    let name: String
    let liveness: Liveness

    public func alive() {
        let now = liveness.clock.monotonicNanoseconds()
        liveness.beats.withLock { $0[name] = Beat(at: now) }
    }

    public func failing(_ problem: String) {
        let now = liveness.clock.monotonicNanoseconds()
        liveness.beats.withLock { $0[name] = Beat(at: now, problem: problem) }
    }

    typealias Beat = Liveness.Beat
}

/// Pings systemd's watchdog at half its interval while the core answers and every service's
/// thread is alive (`Liveness`).
struct WatchdogService: DaemonService {
    let context: DaemonContext
    let microseconds: UInt64

    /// A thread may be silent this long: half the watchdog period (the ping cadence), but at least
    /// 2 s (the Docker follower's retry pause is 1 s). systemd kills WatchdogSec after the last
    /// ping, so a wedged thread is restarted within 1.5 × WatchdogSec; a full-period window would
    /// let a wedged daemon run for twice what the unit asks. Every thread reports every ≤ 250 ms.
    var windowNanoseconds: UInt64 { max(microseconds / 2, 2_000_000) * 1000 }

    func run() async throws {
        let period = Duration.microseconds(Int64(microseconds / 2))
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            await tick()
            try? await Task.sleep(for: period)
        }
    }

    /// Pings when the core answers and every service is alive; returns whether it pinged.
    @discardableResult
    func tick() async -> Bool {
        _ = await core.waiting  // the actor answers: the daemon is not wedged
        let (problem, changed) = liveness.check(windowNanoseconds: windowNanoseconds)
        if let problem {
            if changed { logger.error("not pinging systemd's watchdog: \(problem)") }
            return false
        }
        if changed { logger.notice("every service is alive again: pinging systemd's watchdog") }
        io.notifier.send("WATCHDOG=1")
        return true
    }
}
