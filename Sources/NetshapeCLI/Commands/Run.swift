import ArgumentParser
import NetshapeCore
import NetshapeKernel

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start a command inside a class: its namespace (setns) and its cgroup (like cgexec).")

    @OptionGroup var target: ClassTarget
    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.")
    var command: [String] = []

    func validate() throws {
        if command.isEmpty { throw ValidationError("give the command to run after --") }
    }

    func run() async throws {
        let t = try target.resolve(lock: false)
        // Join the cgroup first (exec inherits it), then the namespace; both before exec, so the
        // command's first packet is already classified.
        try t.hierarchy.move(pid: Syscall.processID, to: t.path)
        try t.netns.enterForExec()
        let failed = Syscall.exec(command)
        throw CLIError(
            "cannot run \(command[0]): \(failed.reason)", exitCode: failed.errno == KernelErrno.ENOENT ? 127 : 126)
    }
}
