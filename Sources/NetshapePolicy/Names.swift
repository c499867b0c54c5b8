/// Names become cgroup directories and netns names: `[a-z0-9][a-z0-9_.-]{0,31}`, so `..`, `/`
/// and anything else that could walk out of the net_cls tree never reach the filesystem.
public func isValidName(_ s: String) -> Bool {
    let u = Array(s.utf8)
    guard (1...32).contains(u.count) else { return false }
    func alnum(_ c: UInt8) -> Bool { (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39) }
    guard alnum(u[0]) else { return false }
    return u.dropFirst().allSatisfy { alnum($0) || $0 == 0x5F || $0 == 0x2E || $0 == 0x2D }
}

/// A Linux interface name: 1–15 bytes, no `/`, `:`, blanks, and not `.` or `..` (`dev_valid_name`).
public func isValidInterfaceName(_ s: String) -> Bool {
    let u = Array(s.utf8)
    guard (1...15).contains(u.count), s != ".", s != ".." else { return false }
    return !u.contains { $0 == 0x2F || $0 == 0x3A || $0 <= 0x20 || $0 >= 0x7F }
}

func isIP(_ s: String) -> Bool { isIPv4(s) || isIPv6(s) }

func isIPv4(_ s: String) -> Bool {
    let parts = s.split(separator: ".", omittingEmptySubsequences: false)
    return parts.count == 4
        && parts.allSatisfy { p in
            !p.isEmpty && p.count <= 3 && p.allSatisfy(\.isNumber) && (Int(p) ?? 256) <= 255
        }
}

func isIPv6(_ s: String) -> Bool {
    guard s.contains(":"), s.split(separator: "::", omittingEmptySubsequences: false).count <= 2 else { return false }
    let groups = s.split(separator: ":", omittingEmptySubsequences: true)
    return groups.count <= 8 && groups.allSatisfy { g in g.count <= 4 && g.allSatisfy(\.isHexDigit) }
}

func isCIDR(_ s: String) -> Bool {
    let parts = s.split(separator: "/", omittingEmptySubsequences: false)
    guard parts.count == 2, let len = Int(parts[1]) else { return false }
    let addr = String(parts[0])
    if isIPv4(addr) { return (0...32).contains(len) }
    if isIPv6(addr) { return (0...128).contains(len) }
    return false
}
