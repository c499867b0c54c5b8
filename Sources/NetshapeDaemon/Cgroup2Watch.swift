import Logging
import NetshapeCore
import NetshapeKernel
import ServiceLifecycle
import Synchronization

/// Maps cgroups that appear after apply: a unit started later, a container created later, a
/// directory re-created (it gets a new id). inotify on the parent directories of the policy's
/// cgroup path rules wakes a reconcile, which adds (and drops) map entries in place. A process
/// started inside an already-mapped cgroup needs nothing: its sockets carry the cgroup.
///
/// The rules are read again every second, so a reload that changes them is followed.
struct Cgroup2WatchService: DaemonService {
    let context: DaemonContext

    func run() async throws {
        let changes = AsyncStream<[String]>.makeStream(bufferingPolicy: .bufferingNewest(8))
        let stop = Atomic<Bool>(false)
        let wanted = SharedPaths(ObservationRequest.cgroup2Paths(await core.policy))
        let logger = self.logger
        let clock = io.clock
        guard let mount = Cgroup2Mount.find() else {
            logger.info("cgroup2 is not mounted: no cgroup path to watch")
            return
        }
        let heartbeat = liveness.register("cgroup2 watch")
        try startThread(name: "netshape-cgroup2") {
            var watcher: Cgroup2Watcher?
            while !stop.load(ordering: .relaxed) {
                heartbeat.alive()
                let paths = wanted.value.withLock { $0 }
                if watcher?.paths != paths {
                    watcher = nil
                    if !paths.isEmpty {
                        do {
                            watcher = try Cgroup2Watcher(mount: mount, paths: paths)
                            logger.info("watching \(mount) for cgroup path rules: \(paths.map { "/" + $0 })")
                        } catch {
                            logger.warning("cannot watch \(mount): \(error); new cgroups wait for the periodic check")
                        }
                    }
                }
                guard let w = watcher else {
                    clock.sleep(milliseconds: 250)
                    continue
                }
                let seen = w.wait(timeoutMilliseconds: 250)
                if !seen.isEmpty { changes.continuation.yield(seen) }
            }
        }
        defer { stop.store(true, ordering: .relaxed) }
        let ticker = AsyncStream<Void> { c in
            let task = Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(1))
                    c.yield()
                }
            }
            c.onTermination = { _ in task.cancel() }
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await _ in ticker.cancelOnGracefulShutdown() {
                    let now = ObservationRequest.cgroup2Paths(await core.policy)
                    wanted.value.withLock { $0 = now }
                }
            }
            group.addTask {
                for await seen in changes.stream.cancelOnGracefulShutdown() {
                    let what = "cgroup2: \(seen.joined(separator: ", ")) changed"
                    do { try await core.reconcile(what) } catch { logger.error("\(what): reconcile failed: \(error)") }
                }
            }
            await group.waitForAll()
        }
    }
}

/// The rule paths, shared by the async side (which reads the policy) and the watching thread.
final class SharedPaths: Sendable {
    let value: Mutex<[String]>
    init(_ paths: [String]) { value = Mutex(paths) }
}
