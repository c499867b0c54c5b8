import ArgumentParser
import NetshapeCore
import NetshapeKernel

struct Classify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "classify",
        abstract: "Move running processes into a class (like cgclassify).")

    @OptionGroup var target: ClassTarget
    @Argument(help: "Process ids.")
    var pids: [Int32] = []

    func validate() throws {
        if pids.isEmpty { throw ValidationError("give at least one process id") }
    }

    func run() async throws {
        let t = try target.resolve(lock: true)
        let (s, ns, cls) = (t.session, t.namespace, t.cls)
        // Not entering: resolve refuses a path class (a running process's sockets would not follow).
        guard case .netCls(let hierarchy, let path) = t.placement else {
            throw CLIError("class \(t.namespace.name)/\(t.cls.name) has no net_cls cgroup")
        }
        // Check every pid before moving any, so a bad one changes nothing.
        var processes: [(what: String, command: PathClassEntry.Command)] = []
        for pid in pids {
            guard let (id, p) = s.kernel.process(pid) else {
                let e = NetworkNamespace.procAccessErrno(pid)
                if e == KernelErrno.ENOENT || e == KernelErrno.ESRCH {
                    throw CLIError("no such process \(pid) (or it is a kernel thread)")
                }
                throw CLIError(
                    "cannot read process \(pid)'s network namespace (/proc/\(pid)/ns/net): \(Syscall.describe(errno: e))"
                )
            }
            guard id == t.netns.id else {
                throw CLIError(
                    "process \(pid) (\(p.comm)) lives in another network namespace than \(ns.name) (\(ns.netns)): its packets would never meet class \(cls.name)'s device"
                )
            }
            processes.append(("process \(pid)", PathClassEntry.Command(comm: p.comm, uid: p.uid, gid: p.gid)))
        }
        try t.refuseWhereSockCreateTakes(processes)
        for pid in pids {
            try hierarchy.move(pid: pid, to: path)
            print("moved \(pid) to \(ns.name)/\(cls.name)")
        }
    }
}
