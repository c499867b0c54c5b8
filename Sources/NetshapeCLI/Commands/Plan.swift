import ArgumentParser
import NetshapeEngine

struct Plan: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Print what apply would change, changing nothing.")

    @OptionGroup var options: PolicyOptions
    @Flag(help: "Print a JSON object whose operations array has one entry per change.")
    var json = false
    @Flag(help: "Plan replacing a root qdisc netshape did not create.")
    var force = false

    func run() async throws {
        let s = try Session(policyPath: options.policy, lock: false)
        let plan = try s.engine.plan(s.policy, policyPath: s.path, options: ApplyOptions(force: force))
        if json {
            print(try encodeJSON(PlanJSON(policy: s.path, plan: plan)))
        } else {
            print(Render.plan(plan, policyPath: options.policy))
        }
    }
}
