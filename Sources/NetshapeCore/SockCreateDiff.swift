extension Differ {
    /// The sock_create map in step with the policy: per namespace, the compiled table under the
    /// namespace's netns cookie; the rules of a replaced namespace (an old cookie) removed; the program
    /// attached when some table needs it and detached when no recorded entry uses it any more.
    ///
    /// A cookie belongs to one entry: two entries on one network namespace (two devices) would each
    /// want the socket's one priority, so neither uses the path (a note says so) and both stay with
    /// the daemon. Every map key under an entry's own cookie is netshape's: a rule left by a lost
    /// record is replaced or removed like a recorded one.
    ///
    /// `retiring`: entries this apply drops from the policy. Their rules are removed here, with the
    /// same view of the map as the rules the policy keeps: a separate reset of them would not know
    /// that another entry just put rules in, and would detach the program under them.
    static func diffSockCreate(
        _ desired: DesiredState, _ observed: ObservedState, matcher: ProcessMatcher, retiring: Set<String> = [],
        notes: inout [String]
    ) -> (ops: [Operation], removals: [Operation]) {
        guard let map = observed.sockCreate else { return ([], []) }
        let record = observed.ownership
        var owners: [UInt64: [String]] = [:]
        for ns in desired.namespaces {
            guard let c = observed.namespaces[ns.name]?.netnsCookie, c != 0 else { continue }
            owners[c, default: []].append(ns.name)
        }
        let mine = Set(desired.namespaces.map(\.name)).union(retiring)
        let elsewhere = Dictionary(
            record.namespaces.filter { !mine.contains($0.key) }.compactMap { e in e.value.sockCookie.map { ($0, e.key) }
            },
            uniquingKeysWith: { a, _ in a })
        var ops: [Operation] = []
        var removals: [Operation] = []
        var wanted = false
        var first: String?
        var handled = Set<UInt64>()
        // The map is the host's: rules under cookies these entries do not own (another record's,
        // a replaced or dropped namespace's, still there while the new rules go in) take room too.
        // An owned cookie's stale rules are deleted before its new ones go in, so they take none.
        let own = Set(owners.filter { $0.value.count == 1 && elsewhere[$0.key] == nil }.keys)
        var room = SockCreate.maxEntries - map.entries.keys.filter { !own.contains($0.cookie) }.count
        for ns in desired.namespaces {
            guard let seen = observed.namespaces[ns.name], seen.problem == nil else { continue }
            let cookie = seen.netnsCookie
            var table: [SockRule: SockVerdict] = [:]
            if ns.sockCreate && cookie != 0 {
                if let others = owners[cookie], others.count > 1 {
                    notes.append(
                        "namespaces \(others.joined(separator: " and ")) share one network namespace: their classes "
                            + "are classified by the daemon only (a socket has one priority for both devices)")
                } else if let other = elsewhere[cookie] {
                    notes.append(
                        "namespace \(ns.name): its network namespace is classified at socket creation for "
                            + "namespace \(other) already: this entry's classes are classified by the daemon only")
                } else {
                    table = SockCreate.compile(ns.classes, users: matcher.users, groups: matcher.groups)
                    if table.count > max(room, 0) {
                        let others = SockCreate.maxEntries - room
                        notes.append(
                            "namespace \(ns.name): its rules make \(table.count) socket-creation entries, more than "
                                + "the map holds (\(SockCreate.maxEntries)"
                                + (others > 0 ? ", \(others) of them taken by other namespaces' rules" : "")
                                + "): classified by the daemon only")
                        table = [:]
                    } else {
                        room -= table.count
                    }
                }
            }
            func op(_ a: Operation.Action) -> Operation { Operation(namespace: ns.name, action: a) }
            // A replaced namespace's rules, unless another entry owns that cookie now: its own
            // step below removes what it does not want (deleting them here too failed with ENOENT).
            if let old = record.namespaces[ns.name]?.sockCookie, old != cookie, elsewhere[old] == nil,
                owners[old] == nil
            {
                for (k, v) in map.entries.sorted(by: { $0.key < $1.key }) where k.cookie == old {
                    removals.append(op(.deleteSockRule(k, old: v)))
                }
            }
            let exclusive = cookie != 0 && (owners[cookie]?.count ?? 0) == 1 && elsewhere[cookie] == nil
            if exclusive {
                handled.insert(cookie)
                // Stale rules first: with them still in, a table replaced by another of its size
                // overflowed the map (old and new at once). Their classes still exist here.
                for (k, v) in map.entries.sorted(by: { $0.key < $1.key })
                where k.cookie == cookie && table[k.rule] == nil {
                    ops.append(op(.deleteSockRule(k, old: v)))
                }
                for (rule, v) in table.sorted(by: { $0.key < $1.key }) {
                    let k = SockKey(cookie: cookie, rule: rule)
                    if map.entries[k] != v { ops.append(op(.putSockRule(k, v, old: map.entries[k]))) }
                }
            }
            if !table.isEmpty {
                wanted = true
                first = first ?? ns.name
            }
        }
        // A dropped entry's rules go with it (after the kept entries converged: tagged with its name,
        // they run in apply's retiring step), unless a kept entry owns its cookie now (it converged
        // them above).
        var lastRetired: String?
        var queued = Set((ops + removals).compactMap(\.deletedSockKey))
        for name in retiring.sorted() {
            guard let cookie = record.namespaces[name]?.sockCookie, !handled.contains(cookie) else { continue }
            for (k, v) in map.entries.sorted(by: { $0.key < $1.key })
            where k.cookie == cookie && !queued.contains(k) {
                queued.insert(k)
                removals.append(Operation(namespace: name, action: .deleteSockRule(k, old: v)))
                lastRetired = name
            }
        }
        if wanted, !map.attached, let name = first {
            ops.insert(Operation(namespace: name, action: .attachSockCreate), at: 0)
        }
        // Detached only when the map is left empty: the program serves the whole host, and rules of
        // another state directory's record (tests, a second netshape) must not lose it.
        let deleted = Set((ops + removals).compactMap(\.deletedSockKey))
        if !wanted, map.attached, record.sockCreate == true, elsewhere.isEmpty,
            map.entries.keys.allSatisfy(deleted.contains), let name = lastRetired ?? desired.namespaces.first?.name
        {
            removals.append(Operation(namespace: name, action: .detachSockCreate))
        }
        return (ops, removals)
    }

    /// Removal of the rules `namespaces` put in the sock_create map (under their recorded cookies),
    /// and of the program when no other entry uses it.
    static func resetSockCreate(namespaces: [String], _ observed: ObservedState) -> [Operation] {
        guard let map = observed.sockCreate else { return [] }
        var ops: [Operation] = []
        let record = observed.ownership
        for name in namespaces {
            guard let cookie = record.namespaces[name]?.sockCookie else { continue }
            for (k, v) in map.entries.sorted(by: { $0.key < $1.key }) where k.cookie == cookie {
                ops.append(Operation(namespace: name, action: .deleteSockRule(k, old: v)))
            }
        }
        // Only when the map is left empty: rules of another state directory's record (a test's, a
        // second netshape's) are in the same map, and detaching takes the map with the program.
        let deleted = Set(ops.compactMap(\.deletedSockKey))
        if map.attached, record.sockCreate == true || !deleted.isEmpty,
            !record.sockCreateUsed(except: Set(namespaces)), map.entries.keys.allSatisfy(deleted.contains),
            let name = namespaces.first
        {
            ops.append(Operation(namespace: name, action: .detachSockCreate))
        }
        return ops
    }

    /// Which path serves each named class of `ns`, from the sock_create map as observed, or as it
    /// will be once `operations` are done (`plan`: the same decision `status` makes after apply).
    public static func classPaths(
        _ ns: DesiredNamespace, _ observed: ObservedState, after operations: [Operation] = []
    ) -> [String: ClassPath] {
        let table = sockTable(ns, observed, after: operations)
        var paths: [String: ClassPath] = [:]
        for c in ns.classes { if let n = c.name { paths[n] = SockCreate.path(of: c, table: table) } }
        return paths
    }

    /// The rules of `ns` the sock_create program applies now (or after `operations`): its map's
    /// entries under the namespace's netns cookie while the program is attached; empty otherwise.
    public static func sockTable(
        _ ns: DesiredNamespace, _ observed: ObservedState, after operations: [Operation] = []
    ) -> [SockRule: SockVerdict] {
        let cookie = observed.namespaces[ns.name]?.netnsCookie ?? 0
        guard ns.sockCreate, cookie != 0, var map = observed.sockCreate else { return [:] }
        for op in operations {
            switch op.action {
            case .attachSockCreate: map.attached = true
            case .detachSockCreate: map.attached = false
            case .putSockRule(let k, let v, _): map.entries[k] = v
            case .deleteSockRule(let k, _): map.entries[k] = nil
            default: break
            }
        }
        guard map.attached else { return [:] }
        var table: [SockRule: SockVerdict] = [:]
        for (k, v) in map.entries where k.cookie == cookie { table[k.rule] = v }
        return table
    }
}

extension Operation {
    /// The sock_create map key this operation deletes, if it is a rule deletion.
    var deletedSockKey: SockKey? {
        if case .deleteSockRule(let k, _) = action { return k }
        return nil
    }
}
