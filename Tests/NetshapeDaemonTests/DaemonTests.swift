import FoundationEssentials
import Glibc
import Logging
import NetshapeCore
import NetshapeEngine
import NetshapeKernel
import NetshapePolicy
import NetshapeTestSupport
import Prometheus
import Synchronization
import Testing

@testable import NetshapeDaemon

// The daemon's services over fakes: no root, no kernel, no threads (the exec loop is stepped).

let policyText = SamplePolicy.web

let bulkClass = """

    [[namespace.class]]
    name = "bulk"
    rate = "5mbit"
    match.comm = ["rsync"]
    """

typealias Proc = NetshapeCore.ProcessInfo

struct TestError: Error, CustomStringConvertible {
    var description: String
}

/// Reads the proc connector would give, in order; `.timeout` once they run out.
final class FakeEvents: ProcessEvents, @unchecked Sendable {
    var queue: [Result<ProcConnectorRead, any Error>]
    init(_ queue: [Result<ProcConnectorRead, any Error>]) { self.queue = queue }
    func next(timeoutMilliseconds: Int32) throws -> ProcConnectorRead {
        queue.isEmpty ? .timeout : try queue.removeFirst().get()
    }
}

struct FakeProcesses: ProcessTable {
    var table: [Int32: (netns: String, info: Proc)] = [:]
    func namespaceID(_ pid: Int32) -> String? { table[pid]?.netns }
    func process(_ pid: Int32, fields: ProcScanner.Fields) -> Proc? { table[pid]?.info }
}

struct Move: Equatable {
    var pid: Int32
    var path: String
    var root: String
}

final class FakeMover: CgroupMover, @unchecked Sendable {
    let moves = Mutex<[Move]>([])
    /// pids that exited before the move (ESRCH).
    let gone = Mutex<Set<Int32>>([])
    func move(pid: Int32, to relative: String, root: String) throws {
        if gone.withLock({ $0.contains(pid) }) { throw FakeKernelError(errno: KernelErrno.ESRCH, "no such process") }
        moves.withLock { $0.append(Move(pid: pid, path: relative, root: root)) }
    }
}

/// Time moves only when told to or when someone sleeps.
final class FakeClock: DaemonClock, @unchecked Sendable {
    let now = Mutex<UInt64>(1_000_000_000)
    let sleeps = Mutex<[Int]>([])
    func monotonicNanoseconds() -> UInt64 { now.withLock { $0 } }
    func sleep(milliseconds: Int) {
        sleeps.withLock { $0.append(milliseconds) }
        advance(milliseconds: milliseconds)
    }
    func advance(milliseconds: Int) { now.withLock { $0 += UInt64(milliseconds) * 1_000_000 } }
}

final class FakeNotifier: ServiceNotifier, @unchecked Sendable {
    let sent = Mutex<[String]>([])
    func send(_ state: String) { sent.withLock { $0.append(state) } }
}

/// A directory watch that reports a change each time the test asks for one.
final class FakeWatch: ChangeWatch, @unchecked Sendable {
    let pending = Atomic<Int>(0)
    /// The directories the service asked to watch (created, existing).
    let asked = Mutex<[String]>([])
    func wait(timeoutMilliseconds: Int32) -> Bool {
        if pending.load(ordering: .relaxed) > 0 {
            pending.subtract(1, ordering: .relaxed)
            return true
        }
        usleep(10_000)
        return false
    }
}

/// dockerd's event stream: each `follow` hands out the next connection's events (or its error)
/// and returns, as when dockerd closes the stream; with none left, "dockerd is not running".
final class FakeContainerEvents: ContainerEventSource, @unchecked Sendable {
    let connections = Mutex<[Result<[(String, String)], TestError>]>([])
    let follows = Atomic<Int>(0)
    var endpoint: String { "/fake/docker.sock" }
    func follow(shouldStop: () -> Bool, _ event: (String, String) -> Void) throws {
        follows.add(1, ordering: .relaxed)
        let next = connections.withLock { $0.isEmpty ? nil : $0.removeFirst() }
        guard let next else { throw TestError(description: "connect /fake/docker.sock: No such file or directory") }
        for (action, id) in try next.get() where !shouldStop() { event(action, id) }
    }
}

/// The CNI plugin's attachment records, held in memory.
final class FakeAttachments: AttachmentRecords, @unchecked Sendable {
    let records = Mutex<[String: CNIAttachment]>([:])
    let unreadable = Mutex<[String: String]>([:])
    var directory: String { "/fake/run/netshape/cni" }
    func load() -> (attachments: [String: CNIAttachment], unreadable: [String: String]) {
        (records.withLock { $0 }, unreadable.withLock { $0 })
    }
}

/// A policy "file" the test edits or deletes.
final class FakePolicyFile: @unchecked Sendable {
    let text = Mutex<String?>(policyText)
    func load(_ path: String) throws -> Policy {
        guard let t = text.withLock({ $0 }) else {
            throw PolicyFileError("cannot read policy \(path): No such file or directory")
        }
        return try PolicyParser.parse(t, file: path)
    }
}

let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

/// The daemon's core and classifier over a fake kernel holding namespace "web".
struct Harness {
    let kernel = FakeKernel()
    let processes: FakeProcesses
    let mover = FakeMover()
    let clock = FakeClock()
    let notifier = FakeNotifier()
    let file = FakePolicyFile()
    let registry = PrometheusCollectorRegistry()
    let docker = FakeContainerEvents()
    let attachments = FakeAttachments()
    let io: DaemonIO
    let classifier: ExecClassifier
    let core: DaemonCore
    let stateDirectory: String

    init(processes: FakeProcesses = FakeProcesses(), watch: FakeWatch? = nil) throws {
        kernel.addNamespace("web")
        kernel.users = ["backup": 34]
        self.processes = processes
        let (file, mover, clock, notifier, docker, attachments) = (file, mover, clock, notifier, docker, attachments)
        io = DaemonIO(
            events: { FakeEvents([]) }, processes: processes, mover: mover, clock: clock,
            watch: { create, existing in
                guard let watch else { throw TestError(description: "no watches in this test") }
                watch.asked.withLock { $0 = create + existing }
                return watch
            },
            loadPolicy: { try file.load($0) }, notifier: notifier, netClsRoot: { _ in "/fake/net_cls" },
            containerEvents: docker, attachments: attachments)
        let health = DaemonHealth(factory: PrometheusMetricsFactory(registry: registry))
        classifier = ExecClassifier(logger: quiet, health: health, io: io)
        // The state lock the CLI shares, in a directory of the test's own.
        stateDirectory =
            FileManager.default.temporaryDirectory.appendingPathComponent(
                "netshape-daemon-\(UInt32.random(in: 0...UInt32.max))"
            ).path
        // The test reads the fake kernel after the actor took the engine; nothing runs concurrently.
        nonisolated(unsafe) let engine = Engine(kernel: kernel, logger: quiet)
        core = DaemonCore(
            policy: try file.load("/test/p.toml"), path: "/test/p.toml", engine: engine,
            state: StateStore(directory: stateDirectory), classifier: classifier, io: io, logger: quiet)
    }

    func cleanUp() { try? FileManager.default.removeItem(atPath: stateDirectory) }

    func pump(_ events: FakeEvents, overflow: @escaping () -> Void = {}) -> (ExecEventPump, Liveness) {
        let liveness = Liveness(clock: clock)
        let pump = ExecEventPump(
            source: events, classifier: classifier, clock: clock, heartbeat: liveness.register("exec events"),
            logger: quiet, overflow: overflow)
        return (pump, liveness)
    }

    func metric(_ name: String) -> Double? {
        let text = registry.emitToString()
        return text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap {
            Double($0.split(separator: " ").last ?? "")
        }
    }

    var webID: String { kernel.namespaces["web"]!.netnsID }

    /// What a service is built from, over this harness.
    var context: DaemonContext { DaemonContext(core: core, liveness: Liveness(clock: clock), logger: quiet) }

    /// Reconciles that succeeded (the registry is thread-safe, unlike the fake kernel).
    var reconciles: Double { metric(#"netshape_reconcile_total{result="ok"}"#) ?? 0 }
}

/// Polls `condition` every 10 ms until it holds or `tries` run out; whether it held.
func eventually(tries: Int, _ condition: () async -> Bool) async throws -> Bool {
    for _ in 0..<tries {
        if await condition() { return true }
        try await Task.sleep(for: .milliseconds(10))
    }
    return await condition()
}

@Suite struct ExecEventTests {
    @Test func anExecInAShapedNamespaceMovesTheProcessIntoItsClass() async throws {
        var procs = FakeProcesses()
        let h0 = try Harness()
        defer { h0.cleanUp() }
        let web = h0.webID
        procs.table = [
            500: (web, Proc(pid: 500, comm: "nginx")),
            501: ("4:999", Proc(pid: 501, comm: "nginx")),  // another namespace: not ours
            502: (web, Proc(pid: 502, comm: "nginx")),  // renamed itself to nginx
            504: (web, Proc(pid: 504, comm: "bash")),  // no rule: left where it is
            503: (web, Proc(pid: 503, comm: "nginx")),  // exits before the move
        ]
        let h = try Harness(processes: procs)
        defer { h.cleanUp() }
        try await h.core.reconcile("start")  // 999 is gone from /proc already
        h.mover.gone.withLock { $0 = [503] }
        let (pump, _) = h.pump(
            FakeEvents([
                .success(.events([.exec(tgid: 500, timestampNS: 1), .exec(tgid: 501, timestampNS: 2)])),
                .success(.events([.comm(tgid: 502, timestampNS: 3), .identity(tgid: 503, timestampNS: 4)])),
                .success(.events([.exec(tgid: 999, timestampNS: 5), .exec(tgid: 504, timestampNS: 6)])),
            ]))
        for _ in 0..<3 { pump.step() }
        #expect(
            h.mover.moves.withLock { $0 } == [
                Move(pid: 500, path: CgroupPaths.class("frontend", in: "web"), root: "/fake/net_cls"),
                Move(pid: 502, path: CgroupPaths.class("frontend", in: "web"), root: "/fake/net_cls"),
            ])
        #expect(h.classifier.moves.load(ordering: .relaxed) == 2)
        #expect(h.metric("netshape_classified_processes_total") == 2)
        #expect(h.clock.sleeps.withLock { $0 }.isEmpty)
    }

    @Test func beforeTheFirstApplyNothingIsMoved() throws {
        let h = try Harness(processes: FakeProcesses(table: [500: ("4:1", Proc(pid: 500, comm: "nginx"))]))
        defer { h.cleanUp() }
        let (pump, _) = h.pump(FakeEvents([.success(.events([.exec(tgid: 500, timestampNS: 1)]))]))
        pump.step()
        #expect(h.mover.moves.withLock { $0 }.isEmpty)
    }

    @Test func lostEventsAskForARescan() throws {
        let h = try Harness()
        defer { h.cleanUp() }
        let asked = Mutex(0)
        let (pump, _) = h.pump(FakeEvents([.success(.overflow), .success(.timeout)])) { asked.withLock { $0 += 1 } }
        pump.step()
        pump.step()
        #expect(asked.withLock { $0 } == 1)
        #expect(h.metric("netshape_exec_events_lost_total") == 1)
    }

    /// A socket that keeps failing must not spin: every error is counted and waited out, twice as
    /// long each time up to the cap; one good read resets the pause, and the thread's heartbeat
    /// says "failing" exactly while the errors last.
    @Test func readErrorsAreCountedAndBackedOff() throws {
        let h = try Harness()
        defer { h.cleanUp() }
        let failure = Result<ProcConnectorRead, any Error>.failure(
            KernelError(.netlinkSocket, "recv(NETLINK_CONNECTOR)", errno: 5, reason: "Input/output error"))
        let (pump, liveness) = h.pump(FakeEvents(Array(repeating: failure, count: 4) + [.success(.timeout), failure]))
        for _ in 0..<4 { pump.step() }
        #expect(h.clock.sleeps.withLock { $0 } == [100, 200, 400, 800])
        #expect(pump.failures == 4)
        #expect(liveness.check(windowNanoseconds: 60_000_000_000).problem?.contains("Input/output error") == true)
        pump.step()
        #expect(pump.failures == 0)
        #expect(liveness.check(windowNanoseconds: 60_000_000_000).problem == nil)
        pump.step()
        #expect(h.clock.sleeps.withLock { $0 } == [100, 200, 400, 800, 100])
        #expect(h.metric("netshape_exec_event_errors_total") == 5)
        #expect(ExecEventPump.backoff(afterFailures: 7) == ExecEventPump.maxBackoffMilliseconds)
        #expect(ExecEventPump.backoff(afterFailures: 1000) == ExecEventPump.maxBackoffMilliseconds)
    }
}

@Suite struct WatchdogTests {
    @Test func pingsOnlyWhileEveryServiceIsAlive() async throws {
        let h = try Harness()
        defer { h.cleanUp() }
        let liveness = Liveness(clock: h.clock)
        let exec = liveness.register("exec events")
        let watch = liveness.register("namespace watch")
        let dog = WatchdogService(
            context: DaemonContext(core: h.core, liveness: liveness, logger: quiet), microseconds: 10_000_000)
        func pings() -> Int { h.notifier.sent.withLock { $0 }.filter { $0 == "WATCHDOG=1" }.count }

        #expect(await dog.tick())
        #expect(pings() == 1)
        exec.failing("recv failed")
        #expect(await dog.tick() == false)
        #expect(pings() == 1)
        exec.alive()
        #expect(await dog.tick())
        #expect(pings() == 2)
        // The window is half the 10 s period: silent for 4.9 s still pings, for 5.1 s does not.
        #expect(dog.windowNanoseconds == 5_000_000_000)
        h.clock.advance(milliseconds: 4900)
        exec.alive()
        #expect(await dog.tick())
        #expect(pings() == 3)
        h.clock.advance(milliseconds: 200)
        exec.alive()
        #expect(await dog.tick() == false)
        #expect(pings() == 3)
        watch.alive()
        #expect(await dog.tick())
        #expect(pings() == 4)
    }

    @Test func theMetricsEndpointThreadReportsIn() async throws {
        let clock = FakeClock()
        let liveness = Liveness(clock: clock)
        var (service, _) = try MetricsService.make(address: "127.0.0.1:0", logger: quiet)
        service.liveness = liveness
        let running = Task { [service] in try await service.run() }
        defer { running.cancel() }
        for _ in 0..<100 where liveness.beats.withLock({ $0["metrics endpoint"] == nil }) {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(liveness.beats.withLock { $0["metrics endpoint"] != nil })
        // Past the window on the fake clock: only the thread's own report clears it again.
        clock.advance(milliseconds: 2000)
        var problem = liveness.check(windowNanoseconds: 1_000_000_000).problem
        for _ in 0..<100 where problem != nil {
            try await Task.sleep(for: .milliseconds(10))
            problem = liveness.check(windowNanoseconds: 1_000_000_000).problem
        }
        #expect(problem == nil)
        running.cancel()
        _ = try? await running.value
    }
}

@Suite struct ReconcileTests {
    @Test func reloadAppliesTheChangedPolicy() async throws {
        let h = try Harness()
        defer { h.cleanUp() }
        try await h.core.reconcile("start")
        #expect(h.kernel.cgroups[CgroupPaths.class("bulk", in: "web")] == nil)
        h.file.text.withLock { $0 = policyText + bulkClass }
        #expect(await h.core.reload())
        #expect(await h.core.policy.namespace("web")?.class("bulk") != nil)
        #expect(h.kernel.cgroups[CgroupPaths.class("bulk", in: "web")] != nil)
        #expect(h.kernel.namespaces["web"]!.classes.count == 5)  // root + four classes
    }

    @Test func anInvalidOrDeletedPolicyKeepsTheRunningOne() async throws {
        let h = try Harness()
        defer { h.cleanUp() }
        try await h.core.reconcile("start")
        let before = (h.kernel.cgroups, h.kernel.namespaces["web"]!.classes)
        h.file.text.withLock { $0 = policyText + "\n[[namespace.class]]\nname = \"broken\"\nrate = \"fast\"\n" }
        #expect(await h.core.reload() == false)
        // Text toml++ aborted the process on (SIGHUP reload killed the daemon): refused like any other.
        h.file.text.withLock { $0 = policyText + "\nx = 1979-05-27T\\07:32:00Z\n" }
        #expect(await h.core.reload() == false)
        h.file.text.withLock { $0 = nil }
        #expect(await h.core.reload() == false)
        #expect(await h.core.policy.namespace("web")?.classes.map(\.name) == ["frontend", "backup", "other"])
        #expect(h.kernel.cgroups == before.0)
        #expect(h.kernel.namespaces["web"]!.classes == before.1)
        // The running policy is still enforced: drift is repaired after the failed reloads.
        h.kernel.cgroups[CgroupPaths.class("frontend", in: "web")] = nil
        let report = try await h.core.reconcile("periodic check")
        #expect(!report.performed.isEmpty)
        #expect(h.kernel.cgroups[CgroupPaths.class("frontend", in: "web")] != nil)
    }

    /// `ip netns delete web; ip netns add web`: the namespace is waited for, then shaped again,
    /// and the exec fast path follows the new namespace id, not the old one.
    @Test func aRecreatedNamespaceIsShapedAgainAndFollowed() async throws {
        let h = try Harness()
        defer { h.cleanUp() }
        try await h.core.reconcile("start")
        let oldID = h.webID
        #expect(h.classifier.snapshot.withLock { $0?.namespaces[oldID]?.name } == "web")

        let gone = h.kernel.namespaces.removeValue(forKey: "web")!
        let waiting = try await h.core.reconcile("namespaces changed")
        #expect(waiting.skipped["web"] != nil)
        #expect(await h.core.waiting["web"] != nil)

        var fresh = gone
        fresh.netnsID = "4:4026532999"
        fresh.qdiscs = [ObservedQdisc(handle: .unspecified, parent: .root, kind: "noqueue")]
        fresh.classes = []
        fresh.filters = []
        h.kernel.namespaces["web"] = fresh
        let back = try await h.core.reconcile("namespaces changed")
        #expect(back.skipped.isEmpty)
        #expect(await h.core.waiting.isEmpty)
        #expect(h.kernel.namespaces["web"]!.classes.count == 4)
        let followed = h.classifier.snapshot.withLock { $0?.namespaces.keys.sorted() }
        #expect(followed == ["4:4026532999"])
    }

    /// `ip netns add web` while the daemon runs: the watch wakes the reconcile service, which
    /// shapes the namespace at once instead of at the next periodic check (an hour away here).
    @Test func aNamespaceThatAppearsIsShapedWhenTheWatchFires() async throws {
        let watch = FakeWatch()
        let h = try Harness(watch: watch)
        defer { h.cleanUp() }
        let web = h.kernel.namespaces.removeValue(forKey: "web")!
        try await h.core.reconcile("start")
        #expect(await h.core.waiting["web"] != nil)
        let service = ReconcileService(context: h.context, interval: 3600)
        let running = Task { try await service.run() }
        // The service's own first look (for what appeared before its watch) finds nothing yet; after
        // it nothing reconciles before the watch fires, so the fake kernel is the test's to change.
        let looked = try await eventually(tries: 500) { h.reconciles >= 2 }
        try #require(looked, "the service's first look")
        #expect(await h.core.waiting["web"] != nil)
        h.kernel.namespaces["web"] = web
        watch.pending.store(1, ordering: .relaxed)
        let shaped = try await eventually(tries: 200) { await h.core.waiting.isEmpty }
        running.cancel()
        _ = try? await running.value
        #expect(shaped)
        #expect(h.kernel.namespaces["web"]!.classes.count == 4)
        #expect(watch.asked.withLock { $0 }.contains("/run/netns"))
    }

    /// A namespace made after the first apply but before the watch existed raised no event: the
    /// service looks once when its watch is up, instead of leaving it to the periodic check.
    @Test func aNamespaceMadeBeforeTheWatchIsShapedByItsFirstLook() async throws {
        let watch = FakeWatch()
        let h = try Harness(watch: watch)
        defer { h.cleanUp() }
        let web = h.kernel.namespaces.removeValue(forKey: "web")!
        try await h.core.reconcile("start")
        #expect(await h.core.waiting["web"] != nil)
        h.kernel.namespaces["web"] = web
        let service = ReconcileService(context: h.context, interval: 3600)
        let running = Task { try await service.run() }
        let shaped = try await eventually(tries: 500) { await h.core.waiting.isEmpty }
        running.cancel()
        _ = try? await running.value
        #expect(shaped, "no watch event fired: only the first look can have shaped it")
        #expect(watch.pending.load(ordering: .relaxed) == 0)
        #expect(h.kernel.namespaces["web"]!.classes.count == 4)
    }
}

@Suite struct ContainerEventTests {
    func service(_ h: Harness) -> ContainerEventService {
        ContainerEventService(context: h.context)
    }

    /// `docker restart`: the die and start events each reconcile, which repairs what changed.
    @Test func aDockerEventReconciles() async throws {
        let h = try Harness()
        defer { h.cleanUp() }
        try await h.core.reconcile("start")
        let frontend = CgroupPaths.class("frontend", in: "web")
        h.kernel.cgroups[frontend] = nil
        h.docker.connections.withLock { $0 = [.success([("die", "c0ffee"), ("start", "c0ffee")])] }
        let service = service(h)
        let running = Task { try await service.run() }
        // The fake kernel is read only once the service is stopped.
        _ = try await eventually(tries: 300) { h.reconciles >= 3 }
        running.cancel()
        _ = try? await running.value
        #expect(h.reconciles == 3, "start, then one per event")
        let repaired = h.kernel.cgroups[frontend] != nil
        #expect(repaired, "a docker event reconciled and re-created the removed cgroup")
    }

    /// dockerd not running (or restarting): the service keeps asking, a second apart, and
    /// reconciles nothing meanwhile.
    @Test func withoutDockerdItRetriesEverySecond() async throws {
        let h = try Harness()
        defer { h.cleanUp() }
        try await h.core.reconcile("start")
        let service = service(h)
        let running = Task { try await service.run() }
        _ = try await eventually(tries: 300) { h.docker.follows.load(ordering: .relaxed) >= 3 }
        running.cancel()
        _ = try? await running.value
        #expect(h.docker.follows.load(ordering: .relaxed) >= 3)
        // Between two attempts it sleeps ten times 100 ms on the daemon's clock (heartbeat between).
        let sleeps = h.clock.sleeps.withLock { $0 }
        #expect(sleeps.count >= 20 && sleeps.allSatisfy { $0 == 100 }, "\(sleeps)")
        #expect(h.reconciles == 1, "nothing reconciled after start without events")
    }
}

@Suite struct AttachmentTests {
    static let podPolicy = """
        version = 1
        [[namespace]]
        name = "pod"
        device = "eth0"
        egress = "20mbit"
        default = "rest"

        [[namespace.class]]
        name = "rest"
        rate = "5mbit"
        """

    /// A pod the CNI plugin recorded is converged by the daemon's reconcile, under the owner the
    /// plugin applied it as; one unreadable record is reported without hiding the others.
    @Test func recordedPodsAreConvergedAndAnUnreadableOneIsReported() async throws {
        let h = try Harness()
        defer { h.cleanUp() }
        h.kernel.addNamespace("pod")
        let pod = CNIAttachment(
            containerID: "c0ffee", ifname: "eth0", netns: "/var/run/netns/pod", owner: "cni:net:c0ffee:eth0",
            config: "{}")
        h.attachments.records.withLock { $0 = ["pod": pod] }
        h.attachments.unreadable.withLock { $0 = ["broken": "unreadable /fake/run/netshape/cni/broken.json"] }
        let text = Self.podPolicy
        await h.core.follow(
            CNIAttachments(store: h.attachments, policy: { _ in try PolicyParser.parse(text, file: "pod") }))
        try await h.core.reconcile("start")
        #expect(h.kernel.namespaces["pod"]!.classes.count >= 1)
        #expect(h.kernel.cgroups[CgroupPaths.class("rest", in: "pod")] != nil)
        let status = await h.core.attachmentStatus
        #expect(status["pod"] == "")
        #expect(status["broken"]?.contains("broken.json") == true)

        // DEL: the record goes; the daemon stops following it and does not re-create it.
        h.attachments.records.withLock { $0 = [:] }
        try await h.core.reconcile("namespaces changed")
        #expect(await h.core.attachmentStatus["pod"] == nil)
    }
}
