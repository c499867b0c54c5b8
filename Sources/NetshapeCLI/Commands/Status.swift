import ArgumentParser
import NetshapeCore
import NetshapeEngine
import NetshapeKernel

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
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

    func run() async throws {
        let sleep: (Double) -> Void = { Syscall.sleep(seconds: $0) }
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
