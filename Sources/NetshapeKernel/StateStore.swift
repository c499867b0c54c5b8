import FoundationEssentials
import Glibc
import NetshapeCore

/// netshape's own state under /run/netshape (tmpfs: it vanishes at boot together with the kernel
/// objects it describes): the ownership record and the lock that serializes mutating commands.
public final class StateStore {
    public let directory: String
    var lockFD: Int32 = -1
    /// The record as last read or written, with its bytes: one run reads it several times, and
    /// decoding a 1000-class record costs milliseconds. The file is still read each time; only
    /// unchanged bytes skip the decoding.
    var lastOwnership: (bytes: [UInt8], record: OwnershipRecord)?

    /// `directory` defaults to $NETSHAPE_STATE_DIR, else /run/netshape. A separate state directory is
    /// a separate set of records (and lock): for tests that must not see the host's records.
    public init(directory: String = Environment.value("NETSHAPE_STATE_DIR") ?? "/run/netshape") {
        self.directory = directory
    }

    deinit { if lockFD >= 0 { close(lockFD) } }

    var ownershipPath: String { "\(directory)/ownership.json" }

    /// Takes the exclusive lock (`flock`), waiting for another netshape to finish.
    public func lock() throws {
        guard lockFD < 0 else { return }
        try NetClsHierarchy.makeDirectories(directory)
        let path = "\(directory)/lock"
        let fd = try sys("open(\(path))") { open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600) }
        do {
            try sys("flock(\(path), LOCK_EX)") { flock(fd, LOCK_EX) }
        } catch {
            close(fd)
            throw error
        }
        lockFD = fd
    }

    /// Releases the lock (the daemon holds it only while it changes the machine).
    public func unlock() {
        guard lockFD >= 0 else { return }
        close(lockFD)
        lockFD = -1
    }

    /// The ownership record (empty when none was written yet).
    public func loadOwnership() throws -> OwnershipRecord {
        guard let bytes = Files.read(ownershipPath) else { return OwnershipRecord() }
        if let last = lastOwnership, last.bytes == bytes { return last.record }
        do {
            // The hand-written reader takes what netshape writes; anything it does not know (a
            // newer field, a damaged file) goes to JSONDecoder, which reads it or names the fault.
            let record =
                try (try? RecordCodec.decode(bytes)) ?? JSONDecoder().decode(OwnershipRecord.self, from: Data(bytes))
            lastOwnership = (bytes, record)
            return record
        } catch {
            throw KernelError(.state, "read \(ownershipPath)", reason: "unreadable ownership record: \(error)")
        }
    }

    struct CachedCapabilities: Codable {
        var key: String
        var capabilities: KernelCapabilities
    }

    /// The capabilities probed earlier in this boot on this kernel, if any.
    public func loadCapabilities(key: String) -> KernelCapabilities? {
        guard let bytes = Files.read("\(directory)/capabilities.json"),
            let c = try? JSONDecoder().decode(CachedCapabilities.self, from: Data(bytes)), c.key == key
        else { return nil }
        return c.capabilities
    }

    /// Best effort: a failure only means probing again next time.
    public func saveCapabilities(_ caps: KernelCapabilities, key: String) {
        guard (try? NetClsHierarchy.makeDirectories(directory)) != nil,
            let data = try? JSONEncoder().encode(CachedCapabilities(key: key, capabilities: caps))
        else { return }
        try? Files.replace("\(directory)/capabilities.json", with: String(decoding: data, as: UTF8.self))
    }

    var mountsPath: String { "\(directory)/mounts.json" }

    /// The net_cls hierarchies netshape mounted at a `cgroup_root` (its own file: the ownership
    /// record is about objects of policies, this is about the machine).
    public func loadMounts() -> [MountRecord] {
        guard let bytes = Files.read(mountsPath) else { return [] }
        return (try? JSONDecoder().decode([MountRecord].self, from: Data(bytes))) ?? []
    }

    /// Writes the mount record atomically (temp file + rename).
    public func saveMounts(_ mounts: [MountRecord]) throws {
        try NetClsHierarchy.makeDirectories(directory)
        let data = try JSONEncoder().encode(mounts)
        try Files.replace(mountsPath, with: String(decoding: data, as: UTF8.self))
    }

    /// Writes the record atomically (temp file + rename), so a crash never leaves half a record.
    public func saveOwnership(_ record: OwnershipRecord) throws {
        try NetClsHierarchy.makeDirectories(directory)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data = try encoder.encode(record)
        try Files.replace(ownershipPath, with: String(decoding: data, as: UTF8.self))
        lastOwnership = (Array(data), record)
    }
}

/// The process environment, read through one wrapper.
public enum Environment {
    /// The value of `name`, or nil when unset or empty.
    public static func value(_ name: String) -> String? {
        Syscall.environment(name).flatMap { $0.isEmpty ? nil : $0 }
    }
}

/// One net_cls mount netshape made at a `cgroup_root`.
public struct MountRecord: Codable, Equatable, Sendable {
    public var path: String
    /// netshape created the directory too (and removes it with the mount).
    public var createdDirectory: Bool
    public init(path: String, createdDirectory: Bool) {
        self.path = path
        self.createdDirectory = createdDirectory
    }
}
