/// A container runtime netshape can ask where a container's network namespace is.
public enum ContainerRuntimeKind: String, Sendable, Hashable, Codable, CaseIterable {
    /// dockerd, through its Engine API on /var/run/docker.sock.
    case docker
    /// Podman, through its command line (it has no daemon unless `podman system service` runs).
    case podman

    /// The target naming one container of this runtime.
    public func target(_ reference: String) -> NetnsTarget {
        switch self {
        case .docker: return .docker(reference)
        case .podman: return .podman(reference)
        }
    }
}

/// `containers = "docker:label=KEY=VALUE,label=KEY"`: every running container of a runtime that
/// carries all the labels (a bare KEY: with any value). Each match becomes its own instance of the
/// namespace entry (`Policy.expandingContainers`).
public struct ContainerSelector: Sendable, Hashable, Codable, CustomStringConvertible {
    public var runtime: ContainerRuntimeKind
    /// Label key → required value (nil: the label must exist, any value).
    public var labels: [String: String?]

    public init(runtime: ContainerRuntimeKind, labels: [String: String?]) {
        self.runtime = runtime
        self.labels = labels
    }

    /// Whether a container with `containerLabels` is selected.
    public func matches(_ containerLabels: [String: String]) -> Bool {
        labels.allSatisfy { key, value in
            guard let have = containerLabels[key] else { return false }
            return value.map { $0 == have } ?? true
        }
    }

    /// The labels as the runtimes' list filters spell them: `KEY=VALUE` or `KEY`, sorted.
    public var filterTerms: [String] {
        labels.map { k, v in v.map { "\(k)=\($0)" } ?? k }.sorted()
    }

    public var description: String {
        "\(runtime.rawValue):" + filterTerms.map { "label=\($0)" }.joined(separator: ",")
    }
}

/// A running container, as its runtime lists it (input of `Policy.expandingContainers`).
public struct ContainerInfo: Sendable, Hashable, Codable {
    public var runtime: ContainerRuntimeKind
    /// The full id (64 hex digits for Docker and Podman).
    public var id: String
    public var name: String
    public var labels: [String: String]

    public init(runtime: ContainerRuntimeKind, id: String, name: String, labels: [String: String] = [:]) {
        self.runtime = runtime
        self.id = id
        self.name = name
        self.labels = labels
    }

    /// The first 12 characters of the id, as `docker ps` shows it.
    public var shortID: String { String(id.prefix(12)) }
}

/// Which container an instance of a `containers` entry shapes.
public struct ContainerInstance: Sendable, Hashable, Codable {
    /// The `containers` entry's own name.
    public var entry: String
    public var container: ContainerInfo

    public init(entry: String, container: ContainerInfo) {
        self.entry = entry
        self.container = container
    }
}

/// The longest name a `containers` entry may have: its instances are `NAME-SHORTID` (a 12-digit
/// short id and a dash), and every namespace name fits `[a-z0-9][a-z0-9_.-]{0,31}`.
public let containerEntryNameLimit = 32 - 13

extension Policy {
    /// The distinct selectors of the policy's `containers` entries.
    public var containerSelectors: [ContainerSelector] {
        var seen = Set<ContainerSelector>()
        return namespaces.compactMap(\.containers).filter { seen.insert($0).inserted }
    }

    /// The policy with every `containers` entry replaced by one namespace per matching container:
    /// named `ENTRY-SHORTID`, targeting that container by id, with the entry's rates and classes.
    /// Entries without a selector stay as they are, in place. Pure: `running` is what the runtimes
    /// listed for each selector (a selector missing from it matches nothing).
    public func expandingContainers(_ running: [ContainerSelector: [ContainerInfo]]) -> Policy {
        var out = self
        out.namespaces = namespaces.flatMap { ns -> [NamespacePolicy] in
            guard let sel = ns.containers else { return [ns] }
            let matching = (running[sel] ?? []).filter { $0.runtime == sel.runtime && sel.matches($0.labels) }
            // Sorted by id so the order (and so the plan) is the same whatever order the runtime lists.
            return matching.sorted { $0.id < $1.id }.map { c in
                var i = ns
                i.name = "\(ns.name)-\(c.shortID.lowercased())"
                i.netns = sel.runtime.target(c.id)
                i.containers = nil
                i.instanceOf = ContainerInstance(entry: ns.name, container: c)
                return i
            }
        }
        return out
    }
}

extension Policy {
    /// The `containers` entry an instance name (`ENTRY-SHORTID`) belongs to, and the short id.
    public func containerEntry(ofInstance name: String) -> (entry: NamespacePolicy, shortID: String)? {
        guard name.count > 13 else { return nil }
        let id = name.suffix(12)
        let dash = name.index(name.endIndex, offsetBy: -13)
        guard name[dash] == "-", id.allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else { return nil }
        let entryName = String(name[..<dash])
        guard let e = namespaces.first(where: { $0.name == entryName && $0.containers != nil }) else { return nil }
        return (e, String(id))
    }

    /// Instances of this policy's `containers` entries that `record` holds for `policyPath` (nil: any) but
    /// `expanded` no longer has (their containers stopped or went away), as namespaces that target
    /// the container by its short id: enough for `reset` to find and remove what they had.
    public func goneInstances(_ expanded: Policy, record: OwnershipRecord, policyPath: String?) -> [NamespacePolicy] {
        let current = Set(expanded.namespaces.map(\.name))
        return record.namespaces.filter {
            (policyPath == nil || $0.value.policy == policyPath) && !current.contains($0.key)
        }.keys.sorted()
            .compactMap { name in
                guard let (entry, id) = containerEntry(ofInstance: name), let sel = entry.containers else { return nil }
                var ns = entry
                ns.name = name
                ns.netns = sel.runtime.target(id)
                ns.containers = nil
                return ns
            }
    }
}
