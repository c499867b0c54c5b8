import NetshapeCore

extension Validator {
    // MARK: - Typed values

    mutating func string(_ t: PolicyTable, _ path: [String], _ key: String) -> String? {
        guard let v = t[key] else { return nil }
        if let s = v.string { return s }
        error(path + [key], "\(key) must be a string, found \(v.typeName)")
        return nil
    }

    mutating func strings(_ t: PolicyTable, _ path: [String], _ key: String, label: String) -> [String] {
        guard let v = t[key] else { return [] }
        if let s = v.string { return [s] }
        if let a = v.array {
            var out: [String] = []
            for item in a {
                if let s = item.string, !s.isEmpty {
                    out.append(s)
                } else {
                    error(path + [key], "\(label): match.\(key) takes non-empty strings, found \(item.typeName)")
                }
            }
            return out
        }
        error(path + [key], "\(label): match.\(key) must be a string or an array of strings, found \(v.typeName)")
        return []
    }

    mutating func principals(_ t: PolicyTable, _ path: [String], _ key: String, label: String) -> [Principal] {
        guard let v = t[key] else { return [] }
        let items = v.array ?? [v]
        var out: [Principal] = []
        for item in items {
            if let i = item.int, i >= 0, i <= Int(UInt32.max) {
                out.append(.id(UInt32(i)))
            } else if let s = item.string, !s.isEmpty {
                out.append(UInt32(s).map(Principal.id) ?? .name(s))
            } else {
                error(path + [key], "\(label): match.\(key) takes names or numeric ids, found \(item.typeName)")
            }
        }
        return out
    }

    /// A rate or `N%` of `of` (the namespace egress); nil after reporting when invalid.
    mutating func rate(_ t: PolicyTable, _ path: [String], _ key: String, of base: Rate?, label: String) -> Rate? {
        guard let v = t[key] else { return nil }
        let text: String
        if let s = v.string {
            text = s
        } else if let i = v.int, i >= 0 {
            text = String(i)
        } else {
            error(path + [key], "\(label): \(key) must be a rate such as \"100mbit\", found \(v.typeName)")
            return nil
        }
        if text.hasSuffix("%") {
            guard let base else {
                error(path + [key], "\(label): \(key) cannot be a percentage: it is the base percentages refer to")
                return nil
            }
            guard let pct = Double(text.dropLast().trimmingCharacters()), pct > 0, pct <= 100 else {
                error(path + [key], "\(label): \(key) \"\(text)\" is not a percentage between 0 and 100")
                return nil
            }
            // pct is in (0, 100], so the product stays below the base: no overflow.
            let r = Rate(bytesPerSecond: UInt64(Double(base.bytesPerSecond) * pct / 100))
            if r.bytesPerSecond == 0 { error(path + [key], "\(label): \(key) \"\(text)\" of \(base) rounds to zero") }
            return r.bytesPerSecond == 0 ? nil : r
        }
        guard let r = Rate(parsing: text) else {
            error(
                path + [key],
                "\(label): \(key) \"\(text)\" is not a rate; use tc units such as 10mbit, 1.5gbit, 500kbit, 2mbps (bytes) or 30%"
            )
            return nil
        }
        guard r.bytesPerSecond > 0 else {
            error(path + [key], "\(label): \(key) \"\(text)\" is zero (rates below 8bit round to 0 bytes/s)")
            return nil
        }
        guard r <= HTBLimits.maxRate else {
            error(
                path + [key],
                "\(label): \(key) \"\(text)\" is above \(HTBLimits.maxRate), the fastest rate HTB can hold with a burst it can express (burst is a 32-bit count of 64 ns ticks)"
            )
            return nil
        }
        return r
    }

    /// A size (`burst`, `cburst`): at least one full-size frame, at most one second at `rate` (or 64 KiB,
    /// whichever is more). Larger bursts let a class run unshaped for seconds: the CNI bandwidth
    /// plugin's 4294967295-bit default let 4 Gbit/s through a 20 Mbit limit.
    mutating func size(_ t: PolicyTable, _ path: [String], _ key: String, rate: Rate?, label: String) -> Size? {
        guard let v = t[key] else { return nil }
        let text: String
        if let s = v.string {
            text = s
        } else if let i = v.int, i >= 0 {
            text = String(i)
        } else {
            error(path + [key], "\(label): \(key) must be a size such as \"64kb\", found \(v.typeName)")
            return nil
        }
        guard let s = Size(parsing: text) else {
            error(path + [key], "\(label): \(key) \"\(text)\" is not a size; use tc units such as 1500b, 64kb, 1mb")
            return nil
        }
        if s.bytes < 1514 {
            error(
                path + [key],
                "\(label): \(key) \(s) is smaller than one full-size Ethernet frame (1514 bytes): the class could not send a full packet at once"
            )
            return nil
        }
        if let r = rate {
            let bound = max(r.bytesPerSecond, 64 * 1024)
            if s.bytes > bound {
                error(
                    path + [key],
                    "\(label): \(key) \(s) is more than one second at \(r) (\(Size(bytes: bound))): such a burst leaves the class unshaped for seconds"
                )
                return nil
            }
        }
        if let r = rate, s.bytes > HTBLimits.maxBurst(at: r) {
            error(
                path + [key],
                "\(label): \(key) \(s) at \(r) is more than HTB can express (at most \(Size(bytes: HTBLimits.maxBurst(at: r))): the burst is a 32-bit count of 64 ns ticks)"
            )
            return nil
        }
        return s
    }
}
