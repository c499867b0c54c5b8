import FoundationEssentials
import NetshapeCore
import NetshapeEngine
import NetshapeFailure
import NetshapeKernel
import NetshapePolicy

/// Any JSON value, to pass `prevResult` through untouched and read loosely typed config.
indirect enum JSONValue: Codable, Equatable, Sendable {
    case null, bool(Bool), number(Double), string(String), array([JSONValue]), object([String: JSONValue])

    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            self = .null
        } else if let b = try? c.decode(Bool.self) {
            self = .bool(b)
        } else if let n = try? c.decode(Double.self) {
            self = .number(n)
        } else if let s = try? c.decode(String.self) {
            self = .string(s)
        } else if let a = try? c.decode([JSONValue].self) {
            self = .array(a)
        } else {
            self = .object(try c.decode([String: JSONValue].self))
        }
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .number(let n):
            if n == n.rounded(), abs(n) < 1e15 { try c.encode(Int64(n)) } else { try c.encode(n) }
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }

    subscript(_ key: String) -> JSONValue? {
        if case .object(let o) = self { return o[key] }
        return nil
    }
    var number: Double? { if case .number(let n) = self { return n } else { return nil } }
    var string: String? { if case .string(let s) = self { return s } else { return nil } }
}

/// A CNI error object (spec section "Error"): printed on stdout, exit 1.
struct CNIError: Error {
    /// 1 incompatible version, 4 invalid environment, 6 decoding, 7 invalid network config,
    /// 11 try again later; 100+ netshape's own (100: CHECK found the shaping changed).
    var code: Int
    var msg: String
    var details: String = ""
}

/// `netshape` as a chained CNI plugin, where the `bandwidth` plugin sits today. The CNI transport
/// is only a harness: it turns the network config into a one-namespace policy and calls the same
/// engine as `netshape apply` (ADD), `netshape reset` (DEL) and `netshape plan` (CHECK).
///
/// Accepts the bandwidth plugin's keys in its units (bits per second and bits), top-level or in
/// `runtimeConfig.bandwidth`, treating containerd's 4294967295-bit burst as "unset", plus an
/// optional `netshape` block: `{"classes": [{"name", "rate", "ceil", "priority", "match": {…}}],
/// "default": "…"}` in the policy file's own format.
public enum CNIPlugin {
    static let supportedVersions = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    /// The "unlimited" burst containerd and Kubernetes send when a pod sets none.
    static let unsetBurst: Double = 4_294_967_295

    /// Runs one CNI command from the environment and stdin; never returns.
    public static func main() -> Never {
        let env = Syscall.environment()
        let command = env["CNI_COMMAND"] ?? ""
        var version = "1.0.0"
        do {
            if command == "VERSION" {
                let stdin = (try? Syscall.readStandardInput()) ?? []
                if let v = (try? JSONDecoder().decode(JSONValue.self, from: Data(stdin)))?["cniVersion"]?.string {
                    version = v
                }
                try emit(
                    .object([
                        "cniVersion": .string(version),
                        "supportedVersions": .array(supportedVersions.map(JSONValue.string)),
                    ]))
                Syscall.exit(0)
            }
            let stdin = (try? Syscall.readStandardInput()) ?? []
            let parsed = try CNIConfig(stdin)
            let config = parsed.config
            version = config["cniVersion"]?.string ?? version
            guard supportedVersions.contains(version) else {
                throw CNIError(
                    code: 1, msg: "netshape does not support CNI version \(version)",
                    details: "supported: \(supportedVersions)")
            }
            guard let containerID = env["CNI_CONTAINERID"], !containerID.isEmpty else {
                throw CNIError(code: 4, msg: "CNI_CONTAINERID is not set")
            }
            let ifname = env["CNI_IFNAME"] ?? "eth0"
            let name = namespaceName(containerID: containerID, ifname: ifname)
            let network = config["name"]?.string ?? ""
            // The ownership record's policy key names the network and the attachment, so GC can
            // tell this network's attachments from others'.
            let source = attachmentSource(network: network, containerID: containerID, ifname: ifname)
            switch command {
            case "ADD":
                guard let netns = env["CNI_NETNS"], !netns.isEmpty else {
                    throw CNIError(code: 4, msg: "CNI_NETNS is not set")
                }
                let policy = try parsed.policy(name: name, netns: netns, ifname: ifname)
                let engine = try engineFor(policy, lock: true)
                let report = try engine.apply(policy, policyPath: source)
                guard report.remaining.isEmpty else {
                    throw CNIError(
                        code: 100, msg: "shaping did not converge",
                        details: report.remaining.map(\.command).joined(separator: "; "))
                }
                // For the daemon, which keeps classifying the pod's processes (CNIAttachments.swift).
                try CNIAttachmentStore().save(
                    CNIAttachment(
                        containerID: containerID, ifname: ifname, netns: netns, owner: source,
                        config: String(decoding: stdin, as: UTF8.self)), name: name)
                // A chained plugin passes its prevResult on; first in a chain, it owes a valid
                // (empty) result of its own.
                try emit(
                    config["prevResult"]
                        ?? .object([
                            "cniVersion": .string(version), "interfaces": .array([]), "ips": .array([]),
                            "dns": .object([:]),
                        ]))
            case "DEL":
                // Works without prevResult and after the namespace is gone: ownership is keyed by the
                // container id, and everything inside a deleted namespace went with it.
                let netns = env["CNI_NETNS"].flatMap { $0.isEmpty ? nil : $0 } ?? "/nonexistent/netns-of-\(name)"
                let policy = Policy(
                    namespaces: [NamespacePolicy(name: name, netns: .path(netns), device: ifname, egress: .gbit(1))],
                    source: source)
                let engine = try engineFor(policy, lock: true)
                // The record's key for this attachment, also when an older netshape (key
                // `cni:CONTAINERID`) or another network name made it.
                let recorded = try StateStore().loadOwnership().namespaces[name]?.policy
                if let recorded, recorded != source, recorded.hasPrefix("cni:") {
                    _ = try engine.reset(policyPath: recorded, policy: policy)
                } else {
                    _ = try engine.reset(policy)
                }
                try CNIAttachmentStore().remove(name: name)
            case "CHECK":
                guard let netns = env["CNI_NETNS"], !netns.isEmpty else {
                    throw CNIError(code: 4, msg: "CNI_NETNS is not set")
                }
                let policy = try parsed.policy(name: name, netns: netns, ifname: ifname)
                let plan = try engineFor(policy, lock: false).plan(
                    policy, policyPath: source, options: ApplyOptions(memberships: false))
                if !plan.operations.isEmpty {
                    throw CNIError(
                        code: 100, msg: "the shaping of \(ifname) in \(netns) differs from the configuration",
                        details: plan.operations.map(\.command).joined(separator: "; "))
                }
            case "STATUS":
                _ = try LinuxKernel(settings: Settings()).capabilities()
            case "GC":
                try collectGarbage(config, network: network)
            default:
                throw CNIError(code: 4, msg: "unknown CNI_COMMAND \"\(command)\"")
            }
            Syscall.exit(0)
        } catch let e as CNIError {
            fail(e, version: version)
        } catch {
            fail(cniError(error), version: version)
        }
    }

    /// The CNI error object for a failure, by the same classification as the CLI's exit status.
    static func cniError(_ error: any Error) -> CNIError {
        switch Failure(error)?.kind {
        case .invalidPolicy?:
            return CNIError(code: 7, msg: "invalid netshape configuration", details: "\(error)")
        case .notFound?: return CNIError(code: 3, msg: "\(error)")
        default: return CNIError(code: 999, msg: "\(error)")
        }
    }

    /// `cni:NETWORK:CONTAINERID:IFNAME`, the ownership record's policy key of one attachment.
    static func attachmentSource(network: String, containerID: String, ifname: String) -> String {
        "cni:\(network):\(containerID):\(ifname)"
    }

    /// CNI 1.1 GC: removes the shaping and records of this network's attachments that are not in
    /// `cni.dev/valid-attachments`, and nothing else (other networks, policy files, CNI records
    /// written before the network was part of the key).
    static func collectGarbage(_ config: JSONValue, network: String) throws {
        guard !network.isEmpty else { throw CNIError(code: 7, msg: "name: GC needs the network's name") }
        guard case .array(let items)? = config["cni.dev/valid-attachments"] else {
            throw CNIError(code: 7, msg: "cni.dev/valid-attachments: GC needs the list of valid attachments")
        }
        var valid = Set<String>()
        for (n, item) in items.enumerated() {
            guard let id = item["containerID"]?.string, let ifname = item["ifname"]?.string else {
                throw CNIError(
                    code: 7, msg: "cni.dev/valid-attachments[\(n)]: needs string containerID and ifname")
            }
            valid.insert(attachmentSource(network: network, containerID: id, ifname: ifname))
        }
        let state = StateStore()
        try state.lock()
        let prefix = "cni:\(network):"
        let stale = try state.loadOwnership().namespaces.filter {
            $0.value.policy.hasPrefix(prefix) && !valid.contains($0.value.policy)
        }
        let engine = Engine(kernel: LinuxKernel(settings: Settings(), state: state))
        // From the record alone: it keeps each attachment's target, device, classes and cgroups.
        for source in Set(stale.values.map(\.policy)).sorted() {
            _ = try engine.reset(policyPath: source, policy: nil)
        }
        for name in stale.keys { try CNIAttachmentStore().remove(name: name) }
    }

    static func engineFor(_ policy: Policy, lock: Bool) throws -> Engine {
        let state = StateStore()
        if lock { try state.lock() }
        return Engine(kernel: LinuxKernel(settings: policy.settings, state: state))
    }

    /// A valid namespace name per container attachment: `cni-` + 16 hex digits of its id and interface.
    static func namespaceName(containerID: String, ifname: String) -> String {
        let h = UInt64(Planner.fnv1a(containerID)) << 32 | UInt64(Planner.fnv1a(containerID + "/" + ifname))
        let hex = String(h, radix: 16)
        return "cni-" + String(repeating: "0", count: 16 - hex.count) + hex
    }

    static func emit(_ v: JSONValue) throws {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        Syscall.write(String(decoding: try e.encode(v), as: UTF8.self) + "\n", to: 1)
    }

    static func fail(_ e: CNIError, version: String) -> Never {
        try? emit(
            .object([
                "cniVersion": .string(version), "code": .number(Double(e.code)), "msg": .string(e.msg),
                "details": .string(e.details),
            ]))
        Syscall.exit(1)
    }
}
