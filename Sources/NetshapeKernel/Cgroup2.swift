import Glibc
import NetshapeCore

/// The cgroup v2 (unified) hierarchy, read only: netshape never creates, moves or writes anything
/// in it. It is where a cgroup-path class's directories are found and named by id.
public enum Cgroup2Mount {
    /// The mount point of the cgroup2 root: `/sys/fs/cgroup` on a unified host,
    /// `/sys/fs/cgroup/unified` on a hybrid one. nil when cgroup2 is not mounted.
    public static func find(mountinfo: String? = nil) -> String? {
        guard let text = mountinfo ?? Files.readString("/proc/self/mountinfo") else { return nil }
        return MountInfoEntry.parse(text).first { $0.fsType == "cgroup2" && $0.root == "/" }?.mountPoint
    }

    /// The id the kernel gives the cgroup at `path` (relative to the mount, `a/b`): the directory's
    /// inode number, which is what `bpf_skb_ancestor_cgroup_id` returns. Symlinks are not followed
    /// (cgroupfs has none; one would point outside). nil when it is not a directory there.
    public static func id(mount: String, path: String) -> Cgroup2ID? {
        let components = path.split(separator: "/")
        var st = stat()
        let full = mount + (components.isEmpty ? "" : "/" + components.joined(separator: "/"))
        guard lstat(full, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { return nil }
        return Cgroup2ID(id: UInt64(st.st_ino), level: components.count)
    }
}
