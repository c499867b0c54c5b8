import ArgumentParser
import NetshapeKernel
import NetshapePolicy

struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Validate a policy; exit 0 if it is valid, 65 (with FILE:LINE:COL errors) if not.")

    @OptionGroup var options: PolicyOptions

    func run() async throws {
        let (policy, _) = try PolicyLoader.load(options.policy, trusted: false)
        if let text = try? PolicyFile.read(options.policy, trusted: false).text {
            for w in PolicyParser.unknownPrincipals(
                String(decoding: text, as: UTF8.self), file: options.policy, policy: policy,
                userExists: Accounts.userExists, groupExists: Accounts.groupExists)
            {
                FileHandleStderr.write("\(w.file):\(w.position.line):\(w.position.column): warning: \(w.message)\n")
            }
        }
        let classes = policy.namespaces.reduce(0) { $0 + $1.classes.count }
        print("\(options.policy): valid (\(policy.namespaces.count) namespace(s), \(classes) class(es))")
        // What this kernel does with it: how each class is classified, and every fallback with its
        // reason (not probed without root, which is said).
        for line in Render.kernelSupport(policy, try? LinuxKernel(settings: policy.settings).capabilities()) {
            print(line)
        }
    }
}
