import NetshapeCore

/// `run` into a class classified by cgroup v2 path. Such a class has no net_cls cgroup: its
/// processes are the ones in its paths' directories, so `run` starts the command in the class's
/// directory (its sockets then carry that cgroup from the first one, as with `systemd-run` or
/// `echo $$ > cgroup.procs`). Only where that is exactly the class: one path, applied, and not
/// taken by an earlier class; anywhere else the refusal prints the command that does it by hand.
enum PathClassEntry {
    /// What the socket-creation program reads of the command `run` starts: its comm after exec
    /// and the caller's real uid and gid.
    struct Command: Equatable {
        var comm: String
        var uid: UInt32
        var gid: UInt32

        /// The comm the kernel gives `argv0` at exec: its last path component, cut to 15 bytes.
        static func comm(of argv0: String) -> String {
            let base = argv0.split(separator: "/").last.map(String.init) ?? argv0
            return String(decoding: Array(base.utf8.prefix(15)), as: UTF8.self)
        }

        /// Why a process with this comm, uid and gid would not be in `c` though placed there: the
        /// socket-creation program decides before net_cls and the path classifier alike (the
        /// priority it sets is HTB's answer), so a process an earlier comm/user/group class
        /// matches opens its sockets in that class. nil: nothing takes it from `c`.
        func takenFrom(_ c: PlannedClass, in ns: DesiredNamespace, observed: ObservedState, by what: String)
            -> CLIError?
        {
            guard let taken = SockCreate.evaluate(Differ.sockTable(ns, observed), comm: comm, uid: uid, gid: gid),
                taken != .unspecified, taken != c.spec.classid
            else { return nil }
            let name = ns.classes.first { $0.spec.classid == taken }?.displayName ?? "\(taken)"
            return CLIError(
                "class \(ns.name)/\(c.displayName): \(what) (comm \(comm), uid \(uid), gid \(gid)) matches "
                    + "class \(name)'s rules, which the kernel applies when a socket is created, before the "
                    + "cgroup: its sockets would be in \(name), not \(c.displayName)")
        }
    }

    /// The directory (relative to the cgroup2 mount) `run` enters for `c` of `ns`, with the
    /// cgroup id the map holds for it, or why not. `command`: what the socket-creation program
    /// will read of the command (nil: not checked).
    static func directory(
        _ c: PlannedClass, in ns: DesiredNamespace, observed: ObservedState, policyPath: String,
        command: Command? = nil
    ) -> Result<(mount: String, path: String, id: UInt64), CLIError> {
        let who = "class \(ns.name)/\(c.displayName)"
        guard let mount = observed.cgroup2Mount else {
            return .failure(CLIError("\(who) is classified by cgroup v2 path, but cgroup2 is not mounted"))
        }
        // Gone, its classifier is gone with it: "not mapped, apply" would send the operator the
        // wrong way.
        if let problem = observed.namespaces[ns.name]?.problem {
            return .failure(
                CLIError("\(who): namespace \(ns.name) is not there (\(problem)): nothing would shape the command"))
        }
        var paths: [String] = []
        for p in c.match.cgroup.map(Cgroup2Rule.normalize) where !paths.contains(p) { paths.append(p) }
        guard paths.count == 1, let path = paths.first else {
            // Which directory the operator means is theirs to say: each is the class.
            let each = paths.map { "    " + byHand(mount, $0, ns.target) }.joined(separator: "\n")
            return .failure(
                CLIError(
                    "\(who) is classified by \(paths.count) cgroup v2 paths, so netshape run cannot tell which "
                        + "to start the command in; start it in one of them by hand:\n\(each)"))
        }
        let shown = "/" + path
        if let taken = ns.shadowedCgroup2Paths.first(where: { $0.path == path && $0.className == c.name }) {
            return .failure(
                CLIError(
                    "\(who): its path \(shown) is inside class \(taken.takenBy)'s path (earlier in the policy, so "
                        + "its processes are \(taken.takenBy)'s): the command would not be in \(c.displayName)"))
        }
        guard let id = observed.cgroup2[path] else {
            return .failure(
                CLIError(
                    "\(who): its cgroup \(mount)\(shown) does not exist (netshape does not create cgroup v2 "
                        + "directories: start the unit or container that owns it, or mkdir it), then:\n    "
                        + byHand(mount, path, ns.target)))
        }
        guard observed.namespaces[ns.name]?.cgroup2Map?.entries[id.id] == c.spec.classid else {
            return .failure(
                CLIError(
                    "\(who): \(mount)\(shown) is not mapped to the class yet (cgroup id \(id.id)): "
                        + "run netshape apply \(policyPath) first"))
        }
        if let command, let taken = command.takenFrom(c, in: ns, observed: observed, by: "the command") {
            return .failure(taken)
        }
        return .success((mount, path, id.id))
    }

    /// The shell line that starts COMMAND in `path` of the cgroup2 mount and then in the namespace:
    /// the cgroup first (exec keeps it), as `run` does.
    static func byHand(_ mount: String, _ path: String, _ target: NetnsTarget) -> String {
        let dir = path.isEmpty ? mount : mount + "/" + path
        // Directory names are anyone's (systemd escapes as `\x2d`, a runtime may use spaces): quoted
        // for the inner shell where one would read it otherwise, and the script for the outer one.
        let script = "echo $$ > \(Self.shellWord(dir + "/cgroup.procs", quote: "\"")) && exec \"$@\""
        let enter = "sh -c \(Self.shellWord(script, quote: "'", always: true)) sh"
        switch target {
        case .host: return "\(enter) COMMAND…"
        case .named(let n): return "\(enter) ip netns exec \(n) COMMAND…"
        case .docker, .podman: return "\(enter) nsenter --net=/proc/<container pid>/ns/net COMMAND…"
        case .path, .pid: return "\(enter) nsenter --net=\(Self.shellWord(target.path ?? "", quote: "'")) COMMAND…"
        }
    }

    /// `word` as one shell word: as it is when every byte is plain, else in `quote`s (`'`: any
    /// `'` as `'\''`; `"`: `\`, `"`, `$` and backquote escaped).
    static func shellWord(_ word: String, quote: Character, always: Bool = false) -> String {
        let plain = word.unicodeScalars.allSatisfy {
            ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0)
                || "/._-+:@%=,".unicodeScalars.contains($0)
        }
        if plain && !always && !word.isEmpty { return word }
        if quote == "'" { return "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'" }
        var out = "\""
        for ch in word {
            if "\\\"$`".contains(ch) { out.append("\\") }
            out.append(ch)
        }
        return out + "\""
    }
}
