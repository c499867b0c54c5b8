import NetshapeCore

/// `run` into a class classified by cgroup v2 path. Such a class has no net_cls cgroup: its
/// processes are the ones in its paths' directories, so `run` starts the command in the class's
/// directory (its sockets then carry that cgroup from the first one, as with `systemd-run` or
/// `echo $$ > cgroup.procs`). Only where that is exactly the class: one path, applied, and not
/// taken by an earlier class; anywhere else the refusal prints the command that does it by hand.
enum PathClassEntry {
    /// The directory (relative to the cgroup2 mount) `run` enters for `c` of `ns`, or why not.
    static func directory(
        _ c: PlannedClass, in ns: DesiredNamespace, observed: ObservedState, policyPath: String
    ) -> Result<(mount: String, path: String), CLIError> {
        let who = "class \(ns.name)/\(c.displayName)"
        guard let mount = observed.cgroup2Mount else {
            return .failure(CLIError("\(who) is classified by cgroup v2 path, but cgroup2 is not mounted"))
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
        return .success((mount, path))
    }

    /// The shell line that starts COMMAND in `path` of the cgroup2 mount and then in the namespace:
    /// the cgroup first (exec keeps it), as `run` does.
    static func byHand(_ mount: String, _ path: String, _ target: NetnsTarget) -> String {
        let dir = path.isEmpty ? mount : mount + "/" + path
        let enter = "sh -c 'echo $$ > \(dir)/cgroup.procs && exec \"$@\"' sh"
        switch target {
        case .host: return "\(enter) COMMAND…"
        case .named(let n): return "\(enter) ip netns exec \(n) COMMAND…"
        case .docker, .podman: return "\(enter) nsenter --net=/proc/<container pid>/ns/net COMMAND…"
        case .path, .pid: return "\(enter) nsenter --net=\(target.path ?? "") COMMAND…"
        }
    }
}
