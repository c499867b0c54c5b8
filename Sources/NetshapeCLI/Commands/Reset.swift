import ArgumentParser
import Logging
import NetshapeCore
import NetshapeEngine
import NetshapeKernel

struct Reset: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reset",
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

    func run() async throws {
        let state = StateStore()
        try state.lock()
        if let policy {
            try reset(policy, state)
        } else {
            let (_, engine) = Session.engine(Settings(), state: state, verbose: verbose)
            print(Render.reset(try engine.resetAll(), label: "reset --all"))
        }
        for m in NetClsHierarchy.releaseUnusedMounts(state: state) { print("- umount \(m) (cgroup_root)") }
    }

    /// One policy's reset, from its file or, when that no longer loads, from the record alone.
    func reset(_ policy: String, _ state: StateStore) throws {
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
        let (_, engine) = Session.engine(loaded?.settings ?? Settings(), state: state, verbose: verbose)
        if let note { print("note: \(note)") }
        print(Render.reset(try engine.reset(policyPath: path, policy: loaded), label: policy))
    }
}
