import ArgumentParser
import Logging
import NetshapeCore
import NetshapeEngine
import NetshapeKernel

/// Options every policy-reading command shares.
struct PolicyOptions: ParsableArguments {
    @Argument(help: "The policy file (TOML).")
    var policy: String
}

/// Turns a kernel-facing command's setup into one place: load (trusted), logger, kernel, engine.
struct Session {
    let policy: Policy
    let path: String
    let kernel: LinuxKernel
    let engine: Engine

    init(policyPath: String, verbose: Bool = false, lock: Bool) throws {
        let (policy, path) = try PolicyLoader.load(policyPath, trusted: true)
        self.policy = policy
        self.path = path
        // Every target resolved before the lock: a bad one (a FIFO, another kind of namespace, a
        // hung filesystem) is reported without ever holding up other netshape commands. A missing
        // one is the engine's to judge (provision creates it, the daemon waits for it).
        if lock {
            // Containers are asked of their runtime at each observation instead.
            for ns in policy.namespaces where ns.netns.container == nil {
                do { _ = try NetworkNamespace(ns.netns) } catch let e as KernelError where e.errno == KernelErrno.ENOENT
                {}
            }
        }
        let state = StateStore()
        if lock { try state.lock() }
        (kernel, engine) = Self.engine(policy.settings, state: state, verbose: verbose)
    }

    /// The kernel and engine every command uses, over `state` (locked by the caller when it changes
    /// the machine); `reset` builds them without a policy.
    static func engine(_ settings: Settings, state: StateStore, verbose: Bool) -> (LinuxKernel, Engine) {
        let kernel = LinuxKernel(settings: settings, state: state)
        var logger = Logger(label: "netshape")
        logger.logLevel = verbose ? .info : .warning
        return (kernel, Engine(kernel: kernel, logger: logger))
    }
}
