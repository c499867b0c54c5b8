import FoundationEssentials
import Glibc

/// One pod attachment the CNI plugin shaped, as the runtime described it at ADD: enough for the
/// daemon to rebuild the pod's policy and keep classifying the pod's processes by its `netshape`
/// block. Recorded after a successful ADD, removed at DEL.
public struct CNIAttachment: Codable, Sendable, Equatable {
    public var containerID: String
    public var ifname: String
    /// CNI_NETNS: the pod's network namespace path.
    public var netns: String
    /// The ownership record's policy key the plugin applied it under (`cni:NETWORK:ID:IFNAME`).
    public var owner: String
    /// The network configuration exactly as it came on stdin (JSON).
    public var config: String

    public init(containerID: String, ifname: String, netns: String, owner: String, config: String) {
        self.containerID = containerID
        self.ifname = ifname
        self.netns = netns
        self.owner = owner
        self.config = config
    }
}

/// The attachments under /run/netshape/cni, one JSON file per attachment named after its policy
/// namespace. tmpfs, like the ownership record: it goes at boot with the pods it describes.
/// Writers hold the state lock (the CNI plugin during ADD/DEL, the daemon while reconciling).
public struct CNIAttachmentStore: Sendable {
    public let directory: String

    public init(directory: String = "/run/netshape/cni") { self.directory = directory }

    /// Writes (or replaces) the record of `name` atomically: temp file, then rename.
    public func save(_ a: CNIAttachment, name: String) throws {
        try NetClsHierarchy.makeDirectories(directory)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let text = String(decoding: try encoder.encode(a), as: UTF8.self)
        let path = "\(directory)/\(name).json"
        try Files.replace(path, with: text)
    }

    /// Forgets `name`; a record that is not there is not an error (DEL runs more than once).
    public func remove(name: String) throws {
        let path = "\(directory)/\(name).json"
        let e = sysResult { unlink(path) }.errno
        if e != 0 && e != ENOENT { throw KernelError.syscall("rm \(path)", e) }
    }

    /// Every record by name. An unreadable record is reported by name, so one bad file never hides
    /// the other pods.
    public func load() -> (attachments: [String: CNIAttachment], unreadable: [String: String]) {
        var out: [String: CNIAttachment] = [:]
        var bad: [String: String] = [:]
        for entry in Files.list(directory) where entry.hasSuffix(".json") && !entry.hasPrefix(".") {
            let name = String(entry.dropLast(5))
            guard let bytes = Files.read("\(directory)/\(entry)") else {
                bad[name] = "cannot read \(directory)/\(entry)"
                continue
            }
            do {
                out[name] = try JSONDecoder().decode(CNIAttachment.self, from: Data(bytes))
            } catch {
                bad[name] = "unreadable \(directory)/\(entry): \(error)"
            }
        }
        return (out, bad)
    }
}
