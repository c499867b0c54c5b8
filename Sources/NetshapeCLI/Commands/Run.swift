import ArgumentParser
import NetshapeCore
import NetshapeKernel

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Start a command inside a class: its namespace (setns) and its cgroup (like cgexec).",
        discussion: """
            A class classified by cgroup v2 path is entered through its directory (echo $$ > \
            PATH/cgroup.procs) when it has exactly one path, that directory exists and apply mapped it; \
            otherwise the error prints the command that does it by hand.
            """)

    @OptionGroup var target: ClassTarget
    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.")
    var command: [String] = []

    func validate() throws {
        if command.isEmpty { throw ValidationError("give the command to run after --") }
    }

    func run() async throws {
        let ids = Syscall.realIDs
        let me = PathClassEntry.Command(comm: PathClassEntry.Command.comm(of: command[0]), uid: ids.uid, gid: ids.gid)
        let t = try target.resolve(lock: false, entering: true, command: me)
        // Join the cgroup first (exec inherits it), then the namespace; both before exec, so the
        // command's first packet is already classified.
        switch t.placement {
        case .netCls(let hierarchy, let path):
            try t.refuseWhereSockCreateTakes([("the command", me)])
            try hierarchy.move(pid: Syscall.processID, to: path)
        case .cgroup2(let mount, let path, let id):
            // The classifier asks net_cls before the path map: a caller inside a net_cls class (a
            // shell started by `netshape run` into one) would take the command there. Leave it for
            // the hierarchy's root, classid 0, so the path decides.
            let me = Syscall.processID
            if let h = NetClsHierarchy.find(configured: t.session.policy.settings.cgroupRoot),
                let current = ProcScanner().process(me, fields: .cgroup)?.netCls, !current.isEmpty,
                h.classid(current).map({ $0 != .unspecified }) ?? false
            {
                try h.move(pid: me, to: "")
            }
            try Cgroup2Mount.enter(pid: me, mount: mount, path: path, id: id)
        }
        try t.netns.enterForExec()
        let failed = Syscall.exec(command)
        throw CLIError(
            "cannot run \(command[0]): \(failed.reason)", exitCode: failed.errno == KernelErrno.ENOENT ? 127 : 126)
    }
}
