import ArgumentParser
import NetshapeEngine

struct Apply: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply",
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

    func run() async throws {
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
