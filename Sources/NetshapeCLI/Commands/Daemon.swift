import ArgumentParser
import Logging
import NetshapeCNI
import NetshapeDaemon
import NetshapeKernel

struct DaemonCommand: AsyncParsableCommand {
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

    func run() async throws {
        let (policy, path) = try PolicyLoader.load(options.policy, trusted: true)
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = verbose ? .info : .notice
            return h
        }
        let daemon = Daemon(
            policy: policy, path: path, interval: interval, favorDynmods: favorDynmods, metrics: metrics,
            cniPolicy: CNIPlugin.policy(of:), logger: Logger(label: "netshape"))
        try await daemon.run()
    }
}
