import Logging
import NetshapeCore
import NetshapeKernel
import ServiceLifecycle
import Synchronization

/// Follows dockerd's container start, die and destroy events and reconciles on each, so a
/// `docker restart` (a new namespace, veth and pid) is shaped again within a second, and a
/// `containers` selector gains or loses the container. dockerd may start after netshape or
/// restart itself: the stream is reopened every second until the daemon stops.
///
/// Podman has no daemon to stream from; its CNI namespaces appear under /run/netns, which
/// `ReconcileService` already watches.
struct ContainerEventService: DaemonService {
    let context: DaemonContext

    func run() async throws {
        let events = AsyncStream<String>.makeStream(bufferingPolicy: .bufferingNewest(16))
        let stop = Atomic<Bool>(false)
        let source = io.containerEvents
        let logger = self.logger
        let clock = io.clock
        let heartbeat = liveness.register("docker events")
        try startThread(name: "netshape-docker") {
            var connected = false
            var lastProblem = ""
            while !stop.load(ordering: .relaxed) {
                do {
                    try source.follow(shouldStop: {
                        heartbeat.alive()
                        return stop.load(ordering: .relaxed)
                    }) { action, id in
                        if !connected {
                            connected = true
                            logger.info("following Docker's container events on \(source.endpoint)")
                        }
                        events.continuation.yield("container \(id.prefix(12)) \(action)")
                    }
                    connected = false
                } catch {
                    // Docker not installed or not running is the normal case on many hosts: say it once.
                    if "\(error)" != lastProblem {
                        lastProblem = "\(error)"
                        logger.debug("not following Docker events: \(error)")
                    }
                }
                for _ in 0..<10 where !stop.load(ordering: .relaxed) {
                    heartbeat.alive()
                    clock.sleep(milliseconds: 100)
                }
            }
        }
        defer { stop.store(true, ordering: .relaxed) }
        for await event in events.stream.cancelOnGracefulShutdown() {
            do { try await core.reconcile("docker: \(event)") } catch {
                logger.error("reconcile after docker \(event) failed: \(error)")
            }
        }
    }
}
