import Glibc

/// What the host firewall does to traffic between the ports of a bridge netshape provisions.
///
/// With br_netfilter loaded (dockerd loads it) and `net.bridge.bridge-nf-call-iptables = 1`,
/// frames crossing a Linux bridge go through iptables' FORWARD chain; dockerd sets its policy to
/// DROP where it turned forwarding on, so namespaces on any other bridge can no longer reach each
/// other (architecture.md, "Facts found in the dynamic world").
enum Firewall {
    /// A note with the exact rule that lets `bridge`'s own traffic pass, or nil when nothing blocks
    /// it (no br_netfilter, FORWARD accepts, or an accept rule for the bridge is already there).
    static func bridgeNote(_ bridge: String) -> String? {
        let sysctl = "/proc/sys/net/bridge/bridge-nf-call-iptables"
        guard Files.readString(sysctl)?.trimmingBlanksAndNewlines() == "1" else { return nil }
        guard let (status, out, _) = try? runProgram(["iptables", "-w", "-S", "FORWARD"]), status == 0,
            out.split(separator: "\n").contains("-P FORWARD DROP")
        else { return nil }
        // DOCKER-USER is the chain dockerd leaves to the user and jumps to first.
        let hasDockerUser = (try? runProgram(["iptables", "-w", "-S", "DOCKER-USER"]))?.status == 0
        let chain = hasDockerUser ? "DOCKER-USER" : "FORWARD"
        let rule = ["-i", bridge, "-o", bridge, "-j", "ACCEPT"]
        if (try? runProgram(["iptables", "-w", "-C", chain] + rule))?.status == 0 { return nil }
        return "bridge \(bridge) is filtered by br_netfilter (\(sysctl) = 1) and the iptables FORWARD policy is DROP"
            + (hasDockerUser ? " (dockerd's)" : "")
            + ": namespaces on it cannot reach each other; to let them: iptables -I \(chain) "
            + rule.joined(separator: " ")
    }
}
