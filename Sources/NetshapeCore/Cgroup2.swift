/// A cgroup v2 directory as the kernel names it: its id (the directory's inode number, what
/// `bpf_skb_cgroup_id` and `bpf_skb_ancestor_cgroup_id` return) and its level (the root is 0).
public struct Cgroup2ID: Sendable, Hashable, Codable {
    public var id: UInt64
    public var level: Int
    public init(id: UInt64, level: Int) {
        self.id = id
        self.level = level
    }
}
