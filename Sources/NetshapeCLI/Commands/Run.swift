import ArgumentParser
import NetshapeCore
import NetshapeKernel

struct Run: AsyncParsableCommand {
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

    func run() async throws {
        let s = try Session(policyPath: options.policy, lock: false)
        let (ns, cls) = try resolveClass(self.class, in: s.policy)
        let (h, path) = try appliedCgroup(s, ns, cls)
        // Join the cgroup first (exec inherits it), then the namespace; both before exec, so the
        // command's first packet is already classified.
        try h.move(pid: Syscall.processID, to: path)
        let netns = try s.kernel.namespace(for: NamespaceRequest(name: ns.name, target: ns.netns, device: ns.device))
        try netns.enterForExec()
        let failed = Syscall.exec(command)
        throw CLIError(
            "cannot run \(command[0]): \(failed.reason)", exitCode: failed.errno == KernelErrno.ENOENT ? 127 : 126)
    }
}
