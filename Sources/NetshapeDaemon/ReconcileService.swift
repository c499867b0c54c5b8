import Logging
import NetshapeCore
import NetshapeEngine
import NetshapeKernel
import NetshapePolicy
import ServiceLifecycle
import Synchronization

/// A periodic cheap re-verify (dump and diff) that repairs drift and picks up namespaces; a new
/// file in /run/netns, docker's netns directory or the directory of a path target wakes it at once.
struct ReconcileService: DaemonService {
    let context: DaemonContext
    let interval: Double

    func run() async throws {
        let changes = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let stop = Atomic<Bool>(false)
        // Where namespace files appear: `ip netns`, docker, and the directories of the policy's path targets.
        var dirs = ["/var/run/docker/netns", "/run/docker/netns"]
        for ns in await core.policy.namespaces {
            if case .path(let p) = ns.netns, let slash = p.lastIndex(of: "/") { dirs.append(String(p[..<slash])) }
        }
        do {
            let box = UncheckedBox(try io.watch(["/run/netns", io.attachments.directory], dirs))
            let heartbeat = liveness.register("namespace watch")
            try startThread(name: "netshape-netns") {
                while !stop.load(ordering: .relaxed) {
                    if box.value.wait(timeoutMilliseconds: 250) { changes.continuation.yield() }
                    heartbeat.alive()
                }
            }
            // A namespace made between the first apply and this watch raised no event: look once now.
            changes.continuation.yield()
        } catch {
            // The periodic check still finds new namespaces, only later.
            logger.warning("not watching for new namespaces (found every \(interval) s instead): \(error)")
        }
        defer { stop.store(true, ordering: .relaxed) }
        let ticker = AsyncStream<Void> { c in
            let task = Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(Int(interval * 1000)))
                    c.yield()
                }
            }
            c.onTermination = { _ in task.cancel() }
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await _ in ticker.cancelOnGracefulShutdown() { await self.tick("periodic check") }
            }
            group.addTask {
                for await _ in changes.stream.cancelOnGracefulShutdown() {
                    // Let the creator finish moving the device in before looking.
                    try? await Task.sleep(for: .milliseconds(300))
                    await self.tick("namespaces changed")
                }
            }
            await group.waitForAll()
        }
    }

    func tick(_ reason: String) async {
        do { try await core.reconcile(reason) } catch { logger.error("\(reason) failed: \(error)") }
    }
}
