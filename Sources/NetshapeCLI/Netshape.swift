import ArgumentParser
import NetshapeCNI
import NetshapeFailure
import NetshapeKernel

/// `netshape`: the root command. Subcommands are thin: parse, call the engine, render.
public struct Netshape: AsyncParsableCommand {
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
        Syscall.environment("CNI_COMMAND") != nil
            || CommandLine.arguments.first.map { $0.hasSuffix("netshape-cni") } == true
    }

    /// Runs the CNI command in the environment (see `CNIPlugin`).
    public static func runCNI() -> Never { CNIPlugin.main() }

    /// Entry point: runs the command and maps every failure to the documented exit status
    /// (`Failure`, shared with the CNI plugin).
    public static func runMain() async -> Never {
        if let usage = UsageHelp.preflight(Array(CommandLine.arguments.dropFirst())) {
            FileHandleStderr.write(usage)
            Syscall.exit(2)
        }
        do {
            var command = try parseAsRoot()
            if var async = command as? any AsyncParsableCommand {
                try await async.run()
            } else {
                try command.run()
            }
            Syscall.exit(0)
        } catch {
            if let f = Failure(error) {
                printError(f.message + (f.hint.map { "\n" + $0 } ?? ""), prefixed: f.prefixed)
                Syscall.exit(f.exitStatus)
            }
            let code = exitCode(for: error)
            if code == .success {
                print(fullMessage(for: error))
                Syscall.exit(0)
            }
            if error is ExitCode { Syscall.exit(code.rawValue) }
            // ArgumentParser's usage errors exit 64 (EX_USAGE); netshape's contract says 2, and every
            // error line starts with "netshape: error:".
            var message = fullMessage(for: error)
            if message.hasPrefix("Error: ") { message = "netshape: error: " + message.dropFirst(7) }
            FileHandleStderr.write(message + "\n")
            Syscall.exit(code.rawValue == 64 ? 2 : code.rawValue)
        }
    }
}
