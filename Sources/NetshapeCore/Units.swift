/// A transmission rate, stored in bytes per second: the unit HTB's `rate64`/`ceil64` take on the wire.
///
/// Parsing follows iproute2's `get_rate64` (`lib/utils_math.c`) exactly, case-insensitively:
/// `bit`, `kbit`, `mbit`, `gbit`, `tbit` are bits per second (SI, ×1000); `kibit`, `mibit`,
/// `gibit`, `tibit` are IEC (×1024); `bps`, `kbps`, `mbps`, `gbps`, `tbps` are BYTES per second,
/// `kibps` … `tibps` their IEC forms. A bare number is bits per second. The traps this pins:
/// `1mbit` is 125 000 B/s but `1mbps` is 1 000 000 B/s.
public struct Rate: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    /// Bytes per second.
    public var bytesPerSecond: UInt64

    /// Creates a rate of `bytesPerSecond` bytes per second.
    public init(bytesPerSecond: UInt64) { self.bytesPerSecond = bytesPerSecond }

    /// Creates a rate from bits per second, rounding down to whole bytes as tc does.
    public static func bits(_ bitsPerSecond: UInt64) -> Rate { Rate(bytesPerSecond: bitsPerSecond / 8) }
    /// `n` × 1000 bit/s.
    public static func kbit(_ n: UInt64) -> Rate { bits(n * 1_000) }
    /// `n` × 10^6 bit/s.
    public static func mbit(_ n: UInt64) -> Rate { bits(n * 1_000_000) }
    /// `n` × 10^9 bit/s.
    public static func gbit(_ n: UInt64) -> Rate { bits(n * 1_000_000_000) }

    /// The rate in bits per second.
    public var bitsPerSecond: UInt64 { bytesPerSecond &* 8 }

    public static func < (a: Rate, b: Rate) -> Bool { a.bytesPerSecond < b.bytesPerSecond }

    /// Multiplier in bits per second for each suffix tc accepts (`lib/utils_math.c`, `suffixes[]`).
    static let suffixes: [(String, Double)] = [
        ("bit", 1), ("kibit", 1024), ("kbit", 1000), ("mibit", 1024 * 1024), ("mbit", 1e6),
        ("gibit", 1024 * 1024 * 1024), ("gbit", 1e9), ("tibit", 1024 * 1024 * 1024 * 1024), ("tbit", 1e12),
        ("bps", 8), ("kibps", 8 * 1024), ("kbps", 8000), ("mibps", 8 * 1024 * 1024), ("mbps", 8e6),
        ("gibps", 8 * 1024 * 1024 * 1024), ("gbps", 8e9), ("tibps", 8 * 1024 * 1024 * 1024 * 1024),
        ("tbps", 8e12),
    ]

    /// Parses a tc rate (`"100mbit"`, `"12.5kbps"`, `"1000000"`). Returns nil when the text is not a
    /// rate; a parsed rate may be zero (the caller rejects it with its own wording).
    public init?(parsing text: String) {
        let (number, suffix) = splitNumber(text)
        guard let value = number, value >= 0, value.isFinite else { return nil }
        let multiplier: Double
        if suffix.isEmpty {
            multiplier = 1
        } else if let entry = Rate.suffixes.first(where: { $0.0 == suffix.lowercased() }) {
            multiplier = entry.1
        } else {
            return nil
        }
        let bytes = value * multiplier / 8
        guard bytes < Double(UInt64.max) else { return nil }
        self.bytesPerSecond = UInt64(bytes)
    }

    /// The shortest exact tc spelling in bits (`"100mbit"`, `"2.5gbit"`, `"8bit"`).
    public var description: String {
        let bits = bitsPerSecond
        var candidates: [String] = []
        for (unit, scale) in [
            ("tbit", UInt64(1e12)), ("gbit", UInt64(1e9)), ("mbit", UInt64(1e6)), ("kbit", UInt64(1000)),
        ]
        where bits >= scale {
            if bits % scale == 0 {
                candidates.append("\(bits / scale)\(unit)")
            } else if (bits % scale) * 1000 % scale == 0 {
                candidates.append(formatDecimal(bits, scale) + unit)
            }
        }
        candidates.append("\(bits)bit")
        // The shortest exact spelling; on a tie, the larger unit (listed first).
        return candidates.min { $0.count < $1.count } ?? "\(bits)bit"
    }
}

/// A size in bytes (`burst`, `cburst`, queue limits), parsed like iproute2's `get_size`:
/// `b`, `k`/`kb`, `m`/`mb`, `g`/`gb` are ×1024 bytes; `kbit`, `mbit`, `gbit` are ×1024 bits.
public struct Size: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    /// Bytes.
    public var bytes: UInt64

    /// Creates a size of `bytes` bytes.
    public init(bytes: UInt64) { self.bytes = bytes }

    /// `n` KiB.
    public static func kib(_ n: UInt64) -> Size { Size(bytes: n * 1024) }

    public static func < (a: Size, b: Size) -> Bool { a.bytes < b.bytes }

    /// Parses a tc size (`"64kb"`, `"1500"`, `"2m"`). Returns nil when the text is not a size.
    public init?(parsing text: String) {
        let (number, suffix) = splitNumber(text)
        guard let value = number, value >= 0, value.isFinite else { return nil }
        let multiplier: Double
        switch suffix.lowercased() {
        case "", "b": multiplier = 1
        case "k", "kb": multiplier = 1024
        case "m", "mb": multiplier = 1024 * 1024
        case "g", "gb": multiplier = 1024 * 1024 * 1024
        case "kbit": multiplier = 1024.0 / 8
        case "mbit": multiplier = 1024.0 * 1024 / 8
        case "gbit": multiplier = 1024.0 * 1024 * 1024 / 8
        default: return nil
        }
        let bytes = value * multiplier
        guard bytes < Double(UInt32.max) else { return nil }
        self.bytes = UInt64(bytes)
    }

    /// tc's spelling: `"64Kb"`-style is ambiguous to readers, so print plain units (`"64kb"`, `"1500b"`).
    public var description: String {
        if bytes >= 1024 * 1024 && bytes % (1024 * 1024) == 0 { return "\(bytes / (1024 * 1024))mb" }
        if bytes >= 1024 && bytes % 1024 == 0 { return "\(bytes / 1024)kb" }
        return "\(bytes)b"
    }
}

/// Splits `"12.5mbit"` into (12.5, "mbit"), trimming surrounding blanks. The number part
/// follows `strtod` closely enough for tc values: digits with an optional fraction and exponent.
func splitNumber(_ text: String) -> (Double?, String) {
    let trimmed = text.trimmingBlanks()
    var end = trimmed.startIndex
    var seenDigit = false
    var seenDot = false
    while end < trimmed.endIndex {
        let c = trimmed[end]
        if c.isASCII && c.isNumber {
            seenDigit = true
        } else if c == "." && !seenDot {
            seenDot = true
        } else if (c == "e" || c == "E") && seenDigit {
            // An exponent only when digits follow: "1e6" is a number, "1ebit" is not.
            var probe = trimmed.index(after: end)
            if probe < trimmed.endIndex, trimmed[probe] == "+" || trimmed[probe] == "-" {
                probe = trimmed.index(after: probe)
            }
            guard probe < trimmed.endIndex, trimmed[probe].isASCII, trimmed[probe].isNumber else { break }
            end = probe
            continue
        } else {
            break
        }
        end = trimmed.index(after: end)
    }
    guard seenDigit else { return (nil, String(trimmed)) }
    return (Double(trimmed[trimmed.startIndex..<end]), String(trimmed[end...]))
}

/// `1500000, 1e6` → `"1.5"`: a fixed-point rendering without Foundation.
func formatDecimal(_ value: UInt64, _ scale: UInt64) -> String {
    let whole = value / scale
    var fraction = (value % scale) * 1000 / scale
    var digits = 3
    while digits > 0 && fraction % 10 == 0 {
        fraction /= 10
        digits -= 1
    }
    guard digits > 0 else { return "\(whole)" }
    let text = String(fraction)
    return "\(whole)." + String(repeating: "0", count: digits - text.count) + text
}

extension StringProtocol {
    /// Trims spaces and tabs (Core has no Foundation).
    func trimmingBlanks() -> Substring {
        var s = self[...]
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return Substring(s)
    }
}

/// What an HTB class can hold, so that `check` refuses what the kernel would silently mangle.
///
/// HTB takes the rate as a 64-bit byte count per second (`TCA_HTB_RATE64`), but the burst as a
/// 32-bit byte count that libnl turns into a 32-bit count of psched ticks (64 ns each, from
/// /proc/net/psched) through whole microseconds. Measured on this project's kernel: at 4 tbit the
/// default 4 ms burst is programmed and read back exactly; from 5 tbit it reads back off by tens
/// of kilobytes (apply never converges), and above ~8.6 tbit the burst no longer fits in 32 bits
/// and the kernel shows `burst 0b`.
public enum HTBLimits {
    /// The fastest rate netshape programs: 4 tbit (500 GB/s).
    public static let maxRate = Rate(bytesPerSecond: 500_000_000_000)
    /// The longest burst HTB can express: 2^32-1 ticks of 64 ns (≈ 274.9 s at the class's rate).
    public static let maxBurstNanoseconds: UInt64 = UInt64(UInt32.max) * 64
    /// The largest burst in bytes (a u32).
    public static let maxBurstBytes = UInt64(UInt32.max)

    /// The largest burst `rate` can take: both the byte and the tick limit.
    public static func maxBurst(at rate: Rate) -> UInt64 {
        let (bytes, overflow) = rate.bytesPerSecond.multipliedReportingOverflow(by: maxBurstNanoseconds)
        let byTicks = overflow ? UInt64.max : bytes / 1_000_000_000
        return min(byTicks, maxBurstBytes)
    }
}
