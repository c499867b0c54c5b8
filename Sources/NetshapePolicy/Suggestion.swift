extension StringProtocol {
    func trimmingCharacters() -> String {
        String(self.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}

/// The closest of `candidates` to `word` when it is close enough to be a likely typo: at most one
/// edit per three characters (a swap of neighbours counts as one), or one is a prefix of the other.
func suggestion(for word: String, among candidates: [String]) -> String? {
    let w = word.lowercased()
    let scored = candidates.map { c -> (String, Int) in
        let prefix = w.count >= 3 && (c.hasPrefix(w) || w.hasPrefix(c)) && c.count >= 3
        return (c, prefix ? 1 : editDistance(w, c))
    }.min { $0.1 < $1.1 }
    guard let (best, d) = scored else { return nil }
    return d <= max(1, min(3, best.count / 3)) ? best : nil
}

/// Optimal string alignment distance (Levenshtein plus adjacent transpositions).
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a)
    let b = Array(b)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var d = Array(repeating: Array(repeating: 0, count: b.count + 1), count: a.count + 1)
    for i in 0...a.count { d[i][0] = i }
    for j in 0...b.count { d[0][j] = j }
    for i in 1...a.count {
        for j in 1...b.count {
            let cost = a[i - 1] == b[j - 1] ? 0 : 1
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1, j > 1, a[i - 1] == b[j - 2], a[i - 2] == b[j - 1] {
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
            }
        }
    }
    return d[a.count][b.count]
}
