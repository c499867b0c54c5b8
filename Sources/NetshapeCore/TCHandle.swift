/// A tc handle or classid, `major:minor`, as the kernel's 32-bit `tcm_handle`/`tcm_parent` value.
///
/// Prints the way tc does (`1:10`, `1:`, `root`, `ingress`), in hex, because `tc class show` does
/// and operators compare the two. The net_cls `net_cls.classid` file holds the same 32-bit value,
/// printed in decimal by the kernel.
public struct TCHandle: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    /// Encoded as tc spells it (`"3811:fe2d"`), so state files and JSON read like `tc` output.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        let text = try c.decode(String.self)
        guard let h = TCHandle(parsing: text) else {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "not a tc handle: \(text)")
        }
        self = h
    }

    /// The wire value: `major << 16 | minor` (`TC_H_MAKE`).
    public var raw: UInt32

    /// Creates a handle from its wire value.
    public init(raw: UInt32) { self.raw = raw }
    /// Creates `major:minor` (`TC_H_MAKE(major << 16, minor)`).
    public init(major: UInt16, minor: UInt16) { self.raw = UInt32(major) << 16 | UInt32(minor) }

    /// The high 16 bits (`TC_H_MAJ >> 16`).
    public var major: UInt16 { UInt16(raw >> 16) }
    /// The low 16 bits (`TC_H_MIN`).
    public var minor: UInt16 { UInt16(raw & 0xFFFF) }

    /// `TC_H_ROOT`: the parent of a device's root qdisc.
    public static let root = TCHandle(raw: 0xFFFF_FFFF)
    /// `TC_H_INGRESS`: the parent of the ingress qdisc.
    public static let ingress = TCHandle(raw: 0xFFFF_FFF1)
    /// `TC_H_CLSACT`, the same value as ingress (the kernel distinguishes them by kind).
    public static let clsact = TCHandle(raw: 0xFFFF_FFF1)
    /// `TC_H_MIN_EGRESS`: minor of the clsact egress hook.
    public static let minEgress: UInt16 = 0xFFF3
    /// `TC_H_UNSPEC`: "let the kernel choose" as a handle.
    public static let unspecified = TCHandle(raw: 0)

    public static func < (a: TCHandle, b: TCHandle) -> Bool { a.raw < b.raw }

    /// This handle's qdisc part (`major:0`).
    public var qdisc: TCHandle { TCHandle(major: major, minor: 0) }

    public var description: String {
        switch self {
        case .root: return "root"
        case .ingress: return "ingress"
        case .unspecified: return "none"
        default:
            let maj = String(major, radix: 16)
            return minor == 0 ? "\(maj):" : "\(maj):\(String(minor, radix: 16))"
        }
    }

    /// Parses tc's spelling: `"1:10"`, `"1:"`, `"root"`, hex digits on both sides.
    public init?(parsing text: String) {
        switch text {
        case "root": self = .root
        case "ingress": self = .ingress
        case "none": self = .unspecified
        default:
            let parts = text.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty,
                let maj = UInt16(parts[0], radix: 16)
            else { return nil }
            let min: UInt16
            if parts[1].isEmpty {
                min = 0
            } else if let m = UInt16(parts[1], radix: 16) {
                min = m
            } else {
                return nil
            }
            self.init(major: maj, minor: min)
        }
    }
}
