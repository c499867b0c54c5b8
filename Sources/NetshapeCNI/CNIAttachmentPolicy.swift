import NetshapeCore
import NetshapeKernel

extension CNIPlugin {
    /// The policy of an attachment the plugin recorded at ADD, rebuilt by the same decoder as ADD,
    /// for the daemon (which follows pods but leaves CNI decoding to the plugin).
    @Sendable public static func policy(of a: CNIAttachment) throws -> Policy {
        try CNIConfig(Array(a.config.utf8)).policy(
            name: namespaceName(containerID: a.containerID, ifname: a.ifname), netns: a.netns, ifname: a.ifname)
    }
}
