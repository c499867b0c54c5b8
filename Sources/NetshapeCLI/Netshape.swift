import ArgumentParser
import Dispatch
import FoundationEssentials
import Glibc
import Logging
import NetshapeCore
import NetshapeDaemon
import NetshapeEngine
import NetshapeKernel
import NetshapePolicy

/// `netshape`: the root command. Subcommands are thin: parse, call the engine, render.
public struct Netshape: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "netshape",
        abstract: "Shape the bandwidth of processes, namespaces and containers with HTB and net_cls cgroups.",
        discussion: """
            A TOML policy names network namespaces, their egress (and ingress) rates, and classes \
            with guaranteed rates, ceilings, priorities and rules that pick processes. netshape gives \
            every class a net_cls cgroup and an HTB class on the namespace's device, and keeps the two \
            in step.

            Exit status: 0 success, 1 the machine refused something, 2 usage error, 65 invalid policy.
            """,
        version: "0.1.0",
        subcommands: [
            Check.self, Plan.self, Apply.self, Status.self, Reset.self, Run.self, Classify.self, DaemonCommand.self,
        ]
    )

    public init() {}

    /// True when started by a container runtime as a CNI plugin (CNI_COMMAND set, or argv[0] is
    /// `netshape-cni`).
    public static var isCNIInvocation: Bool {
        getenv("CNI_COMMAND") != nil || CommandLine.arguments.first.map { $0.hasSuffix("netshape-cni") } == true
    }

    /// Runs the CNI command in the environment (see `CNIPlugin`).
    public static func runCNI() -> Never { CNIPlugin.main() }

    /// Entry point: runs the command and maps every failure to the documented exit status.
    public static func runMain() -> Never {
        if let usage = UsageHelp.preflight(Array(CommandLine.arguments.dropFirst())) {
            FileHandleStderr.write(usage)
            Glibc.exit(2)
        }
        do {
            var command = try parseAsRoot()
            try command.run()
            Glibc.exit(0)
        } catch let e as PolicyError {
            printError(e.description, prefixed: false)
            Glibc.exit(65)
        } catch let e as CLIError {
            printError(e.message, prefixed: e.exitCode != 65)
            Glibc.exit(e.exitCode)
        } catch let e as ApplyError {
            printError("apply failed: \(e)")
            Glibc.exit(1)
        } catch let e as ResetError {
            printError("reset failed: \(e)")
            Glibc.exit(1)
        } catch let e as DiffError {
            printError(e.message)
            Glibc.exit(1)
        } catch let e as PlanError {
            printError(e.message)
            Glibc.exit(1)
        } catch let e as KernelError {
            var message = e.description
            if (e.errno == EPERM || e.errno == EACCES) && geteuid() != 0 {
                message +=
                    "\nnetshape changes the kernel and cgroupfs: run it as root (it needs CAP_NET_ADMIN and CAP_SYS_ADMIN)"
            }
            printError(message)
            Glibc.exit(1)
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                print(fullMessage(for: error))
                Glibc.exit(0)
            }
            if error is ExitCode { Glibc.exit(code.rawValue) }
            // ArgumentParser's usage errors exit 64 (EX_USAGE); netshape's contract says 2, and every
            // error line starts with "netshape: error:".
            var message = fullMessage(for: error)
            if message.hasPrefix("Error: ") { message = "netshape: error: " + message.dropFirst(7) }
            FileHandleStderr.write(message + "\n")
            Glibc.exit(code.rawValue == 64 ? 2 : code.rawValue)
        }
    }
}

enum FileHandleStderr {
    static func write(_ s: String) {
        var text = s
        text.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
    }
}

func printError(_ message: String, prefixed: Bool = true) {
    FileHandleStderr.write((prefixed ? "netshape: error: " : "") + message + "\n")
}

/// Options every policy-reading command shares.
struct PolicyOptions: ParsableArguments {
    @Argument(help: "The policy file (TOML).")
    var policy: String
}

/// Turns a kernel-facing command's setup into one place: load (trusted), logger, kernel, engine.
struct Session {
    let policy: Policy
    let path: String
    let kernel: LinuxKernel
    let engine: Engine

    init(policyPath: String, verbose: Bool = false, lock: Bool) throws {
        let (policy, path) = try PolicyLoader.load(policyPath, trusted: true)
        self.policy = policy
        self.path = path
        // Every target resolved before the lock: a bad one (a FIFO, another kind of namespace, a
        // hung filesystem) is reported without ever holding up other netshape commands. A missing
        // one is the engine's to judge (provision creates it, the daemon waits for it).
        if lock {
            // Containers are asked of their runtime at each observation instead.
            for ns in policy.namespaces where ns.netns.container == nil {
                do { _ = try NetworkNamespace(ns.netns) } catch let e as KernelError where e.errno == ENOENT {}
            }
        }
        let state = StateStore()
        if lock { try state.lock() }
        kernel = LinuxKernel(settings: policy.settings, state: state)
        var logger = Logger(label: "netshape")
        logger.logLevel = verbose ? .info : .warning
        engine = Engine(kernel: kernel, logger: logger)
    }
}

func encodeJSON<T: Encodable>(_ value: T) throws -> String {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    return String(decoding: try e.encode(value), as: UTF8.self)
}

// MARK: - check

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate a policy; exit 0 if it is valid, 65 (with FILE:LINE:COL errors) if not.")

    @OptionGroup var options: PolicyOptions

    func run() throws {
        let (policy, _) = try PolicyLoader.load(options.policy, trusted: false)
        if let text = try? PolicyFile.read(options.policy, trusted: false).text {
            for w in PolicyParser.unknownPrincipals(
                String(decoding: text, as: UTF8.self), file: options.policy, policy: policy,
                userExists: Accounts.userExists, groupExists: Accounts.groupExists)
            {
                FileHandleStderr.write("\(w.file):\(w.position.line):\(w.position.column): warning: \(w.message)\n")
            }
        }
        let classes = policy.namespaces.reduce(0) { $0 + $1.classes.count }
        print("\(options.policy): valid (\(policy.namespaces.count) namespace(s), \(classes) class(es))")
    }
}

// MARK: - plan

struct Plan: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print what apply would change, changing nothing.")

    @OptionGroup var options: PolicyOptions
    @Flag(help: "Print a JSON object whose operations array has one entry per change.")
    var json = false
    @Flag(help: "Plan replacing a root qdisc netshape did not create.")
    var force = false

    func run() throws {
        let s = try Session(policyPath: options.policy, lock: false)
        let plan = try s.engine.plan(s.policy, policyPath: s.path, options: ApplyOptions(force: force))
        if json {
            print(try encodeJSON(PlanJSON(policy: s.path, plan: plan)))
        } else {
            print(Render.plan(plan, policyPath: options.policy))
        }
    }
}

// MARK: - apply

struct Apply: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Converge the machine to the policy: create, change in place, or remove what differs.",
        discussion: """
            Idempotent: a second apply of the same policy changes nothing. Never deletes or replaces an \
            object netshape did not create; a device whose root qdisc someone else set is refused unless \
            --force. A failure half-way rolls back what this run changed.
            """)

    @OptionGroup var options: PolicyOptions
    @Flag(name: .customLong("dry-run"), help: "Only print what would change (the same as plan).")
    var dryRun = false
    @Flag(help: "Replace a root qdisc netshape did not create.")
    var force = false
    @Flag(name: .shortAndLong, help: "Log every change as it is made.")
    var verbose = false

    func run() throws {
        if dryRun {
            let s = try Session(policyPath: options.policy, lock: false)
            print(
                Render.plan(
                    try s.engine.plan(s.policy, policyPath: s.path, options: ApplyOptions(force: force)),
                    policyPath: options.policy))
            return
        }
        let s = try Session(policyPath: options.policy, verbose: verbose, lock: true)
        let report = try s.engine.apply(s.policy, policyPath: s.path, options: ApplyOptions(force: force))
        print(Render.applied(report, policyPath: options.policy))
        if !report.remaining.isEmpty {
            throw CLIError(
                "verification after apply found \(report.remaining.count) difference(s) left:\n"
                    + report.remaining.map { "  \($0.command)" }.joined(separator: "\n"))
        }
    }
}

// MARK: - status

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Per namespace and class: rate, ceil, bytes, packets, drops, throughput and member pids.",
        discussion: """
            Without a policy, shows every namespace netshape's record names on this machine, including \
            those whose policy file is gone or whose namespace is gone (marked ORPHANED, with the command \
            that removes them); exits 0. With a policy, exits 1 when one of its namespaces is not there.
            """)

    @Argument(help: "The policy file; omitted = every policy netshape has applied on this machine.")
    var policy: String?
    @Flag(help: "Print JSON.")
    var json = false
    @Option(help: "Seconds between the two counter samples that give the current throughput (0 = one sample).")
    var interval: Double = 1
    @Flag(help: "Redraw a live view every --interval seconds until q or Ctrl-C (plain lines when not a terminal).")
    var watch = false

    func validate() throws {
        guard interval >= 0 && interval <= 3600 else {
            throw ValidationError("--interval must be a number of seconds from 0 to 3600, not \(interval)")
        }
        if watch && interval < 0.2 { throw ValidationError("--watch needs an --interval of at least 0.2 seconds") }
        if watch && json { throw ValidationError("--watch and --json do not go together") }
    }

    func run() throws {
        let sleep: (Double) -> Void = { secs in
            var ts = timespec(tv_sec: Int(secs), tv_nsec: Int((secs - Double(Int(secs))) * 1e9))
            var rest = timespec()
            while nanosleep(&ts, &rest) != 0 && errno == EINTR { ts = rest }
        }
        if watch {
            let owned = try policy == nil ? StateStore().loadOwnership().policies.map(\.policy) : []
            return try WatchLoop.run(
                paths: policy.map { [$0] } ?? owned.filter { !$0.hasPrefix("cni:") }, interval: interval)
        }
        var combined = StatusReport(namespaces: [], interval: interval)
        if let p = policy {
            let s = try Session(policyPath: p, lock: false)
            combined = try s.engine.status(s.policy, interval: interval, sleep: sleep)
            print(json ? try encodeJSON(combined) : Render.status(combined))
            let missing = combined.namespaces.filter { $0.problem != nil }.map(\.name)
            if !missing.isEmpty {
                throw CLIError(
                    "\(missing.count) namespace(s) of \(p) are not there: \(missing.joined(separator: ", "))")
            }
            return
        }
        let owned = try StateStore().loadOwnership()
        if owned.namespaces.isEmpty {
            print(json ? try encodeJSON(combined) : "netshape has applied no policy on this machine")
            return
        }
        // One stale record must never hide the others: each policy is shown from its file when that
        // can be read, and from the record alone when it cannot.
        for (path, names) in owned.policies {
            let recordOnly = Engine(kernel: LinuxKernel(settings: Settings()))
            if path.hasPrefix("cni:") {
                combined.namespaces += try recordOnly.recordStatus(names: names, orphaned: nil)
                continue
            }
            do {
                let s = try Session(policyPath: path, lock: false)
                let r = try s.engine.status(s.policy, interval: interval, sleep: sleep)
                combined.namespaces += r.namespaces.map { ns in
                    var n = ns
                    n.policy = path
                    if let problem = ns.problem {
                        n.orphaned =
                            "its namespace is not there (\(problem)): run netshape reset \(path) if it is gone for good"
                    }
                    return n
                }
                // Entries recorded for this policy that it no longer has (an edit dropped them).
                let dropped = names.filter { s.policy.namespace($0) == nil }
                if !dropped.isEmpty {
                    combined.namespaces += try recordOnly.recordStatus(
                        names: dropped, orphaned: "no longer in \(path)")
                }
            } catch {
                combined.namespaces += try recordOnly.recordStatus(
                    names: names, orphaned: Render.firstLine(error))
            }
        }
        print(json ? try encodeJSON(combined) : Render.status(combined))
    }
}

// MARK: - reset

struct Reset: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Remove everything a policy created (cgroups, HTB trees, classifier, provisioned links); nothing else.",
        discussion: """
            Works from netshape's own record, so a policy file that was edited or deleted since it was \
            applied is still reset by its path. --all removes everything the record names on this host \
            (every policy and CNI attachment). Objects netshape did not create, even inside its trees \
            and cgroup directories, are left as they are and named.
            """)

    @Argument(help: "The policy file (it may have been edited or deleted since it was applied).")
    var policy: String?
    @Flag(help: "Remove everything netshape's record says it made on this host, every policy and CNI attachment.")
    var all = false
    @Flag(name: .shortAndLong, help: "Log every change as it is made.")
    var verbose = false

    func validate() throws {
        if all == (policy != nil) { throw ValidationError("give either a policy file or --all") }
    }

    func run() throws {
        var logger = Logger(label: "netshape")
        logger.logLevel = verbose ? .info : .warning
        let state = StateStore()
        try state.lock()
        guard let policy else {
            let engine = Engine(kernel: LinuxKernel(settings: Settings(), state: state), logger: logger)
            print(Render.reset(try engine.resetAll(), label: "reset --all"))
            for m in NetClsHierarchy.releaseUnusedMounts(state: state) { print("- umount \(m) (cgroup_root)") }
            return
        }
        let path = PolicyLoader.absolutePath(policy)
        var loaded: Policy?
        var note: String?
        do {
            loaded = try PolicyLoader.load(policy, trusted: true).0
        } catch {
            note = "\(Render.firstLine(error)): resetting from netshape's record alone"
            guard try state.loadOwnership().namespaces.values.contains(where: { $0.policy == path }) else {
                throw CLIError("cannot reset \(policy): \(Render.firstLine(error)), and netshape has no record of it")
            }
        }
        let engine = Engine(kernel: LinuxKernel(settings: loaded?.settings ?? Settings(), state: state), logger: logger)
        if let note { print("note: \(note)") }
        print(Render.reset(try engine.reset(policyPath: path, policy: loaded), label: policy))
        for m in NetClsHierarchy.releaseUnusedMounts(state: state) { print("- umount \(m) (cgroup_root)") }
    }
}

// MARK: - run and classify

/// Resolves `CLASS` or `NAMESPACE/CLASS` against a policy.
func resolveClass(_ spec: String, in policy: Policy) throws -> (NamespacePolicy, ClassPolicy) {
    let parts = spec.split(separator: "/", maxSplits: 1).map(String.init)
    let candidates: [(NamespacePolicy, ClassPolicy)]
    if parts.count == 2 {
        guard let ns = policy.namespace(parts[0]) else {
            throw CLIError(UsageHelp.unknownNamespace(parts[0], in: policy), exitCode: 2)
        }
        candidates = ns.class(parts[1]).map { [(ns, $0)] } ?? []
    } else {
        candidates = policy.namespaces.compactMap { ns in ns.class(spec).map { (ns, $0) } }
    }
    guard let first = candidates.first else {
        let ns = parts.count == 2 ? policy.namespace(parts[0]) : nil
        throw CLIError(UsageHelp.unknownClass(spec, in: policy, namespace: ns), exitCode: 2)
    }
    guard candidates.count == 1 else {
        let names = candidates.map { "\($0.0.name)/\($0.1.name)" }.joined(separator: ", ")
        throw CLIError("class \"\(spec)\" is in several namespaces (\(names)): write NAMESPACE/CLASS", exitCode: 2)
    }
    return first
}

/// The class's cgroup, which `apply` must have created.
func appliedCgroup(_ s: Session, _ ns: NamespacePolicy, _ cls: ClassPolicy) throws -> (NetClsHierarchy, String) {
    let h = try s.kernel.netCls()
    let path = CgroupPaths.class(cls.name, in: ns.name)
    guard h.classid(path) != nil else {
        throw CLIError(
            "class \(ns.name)/\(cls.name) has no cgroup yet (\(h.root)/\(path)): run netshape apply \(s.policy.source) first"
        )
    }
    return (h, path)
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start a command inside a class: its namespace (setns) and its cgroup (like cgexec).")

    @OptionGroup var options: PolicyOptions
    @Argument(help: "The class (CLASS or NAMESPACE/CLASS).")
    var `class`: String
    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.")
    var command: [String] = []

    func validate() throws {
        if command.isEmpty { throw ValidationError("give the command to run after --") }
    }

    func run() throws {
        let s = try Session(policyPath: options.policy, lock: false)
        let (ns, cls) = try resolveClass(self.class, in: s.policy)
        let (h, path) = try appliedCgroup(s, ns, cls)
        // Join the cgroup first (exec inherits it), then the namespace; both before exec, so the
        // command's first packet is already classified.
        try h.move(pid: getpid(), to: path)
        let netns = try s.kernel.namespace(for: NamespaceRequest(name: ns.name, target: ns.netns, device: ns.device))
        try netns.enterForExec()
        var argv: [UnsafeMutablePointer<CChar>?] = command.map { strdup($0) }
        argv.append(nil)
        execvp(command[0], &argv)
        throw CLIError(
            "cannot run \(command[0]): \(String(cString: strerror(errno)))", exitCode: errno == ENOENT ? 127 : 126)
    }
}

struct Classify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Move running processes into a class (like cgclassify).")

    @OptionGroup var options: PolicyOptions
    @Argument(help: "The class (CLASS or NAMESPACE/CLASS).")
    var `class`: String
    @Argument(help: "Process ids.")
    var pids: [Int32] = []

    func validate() throws {
        if pids.isEmpty { throw ValidationError("give at least one process id") }
    }

    func run() throws {
        let s = try Session(policyPath: options.policy, lock: true)
        let (ns, cls) = try resolveClass(self.class, in: s.policy)
        let (h, path) = try appliedCgroup(s, ns, cls)
        let netns = try s.kernel.namespace(for: NamespaceRequest(name: ns.name, target: ns.netns, device: ns.device))
        // Check every pid before moving any, so a bad one changes nothing.
        for pid in pids {
            guard let (id, p) = s.kernel.process(pid) else {
                let e = NetworkNamespace.procAccessErrno(pid)
                if e == ENOENT || e == ESRCH { throw CLIError("no such process \(pid) (or it is a kernel thread)") }
                throw CLIError(
                    "cannot read process \(pid)'s network namespace (/proc/\(pid)/ns/net): \(String(cString: strerror(e)))"
                )
            }
            guard id == netns.id else {
                throw CLIError(
                    "process \(pid) (\(p.comm)) lives in another network namespace than \(ns.name) (\(ns.netns)): its packets would never meet class \(cls.name)'s device"
                )
            }
        }
        for pid in pids {
            try h.move(pid: pid, to: path)
            print("moved \(pid) to \(ns.name)/\(cls.name)")
        }
    }
}

// MARK: - daemon

struct DaemonCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon",
        abstract: "Apply, then keep new processes classified and the machine converged (systemd: Type=notify).",
        discussion: """
            Classifies every new process the moment it execs (netlink proc connector), re-verifies and \
            repairs the kernel state every --interval seconds, applies to namespaces when they appear, \
            reloads the policy on SIGHUP (an invalid one is logged and the running policy stays), and \
            stops on SIGTERM leaving the shaping in place.
            """)

    @OptionGroup var options: PolicyOptions
    @Option(help: "Seconds between re-verifications (drift repair, namespaces that appeared, missed processes).")
    var interval: Double = 30
    @Flag(name: .shortAndLong, help: "Log every classification and change (info level).")
    var verbose = false
    @Flag(
        inversion: .prefixedNo,
        help: "Keep cgroup migrations fast while running (a favordynmods cgroup hierarchy; Linux 6.0+).")
    var favorDynmods = true
    @Option(
        help: ArgumentHelp(
            "Serve Prometheus metrics on HOST:PORT at /metrics (off by default).", valueName: "HOST:PORT"))
    var metrics: String?

    func validate() throws {
        // Written so that NaN fails too (every comparison with NaN is false).
        guard interval >= 0.2 && interval <= 86_400 else {
            throw ValidationError("--interval must be a number of seconds from 0.2 to 86400, not \(interval)")
        }
        if let m = metrics, TCPSocket.parseAddress(m) == nil {
            throw ValidationError(
                "--metrics wants HOST:PORT with a numeric address, e.g. 127.0.0.1:9477 (got \"\(m)\")")
        }
    }

    func run() throws {
        let (policy, path) = try PolicyLoader.load(options.policy, trusted: true)
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = verbose ? .info : .notice
            return h
        }
        let daemon = Daemon(
            policy: policy, path: path, interval: interval, favorDynmods: favorDynmods, metrics: metrics,
            cniPolicy: CNIPlugin.policy(of:), logger: Logger(label: "netshape"))
        let done = DispatchSemaphore(value: 0)
        let failure = FailureBox()
        Task {
            do { try await daemon.run() } catch { failure.error = error }
            done.signal()
        }
        done.wait()
        if let e = failure.error { throw e }
    }
}

/// The daemon's outcome, handed from its task to the waiting main thread.
final class FailureBox: @unchecked Sendable {
    var error: (any Error)?
}
