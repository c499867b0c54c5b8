import NetshapeCore
import NetshapeEngine

/// `plan --json`: one entry per change in `operations` (empty when nothing differs).
struct PlanJSON: Encodable {
    struct Op: Encodable {
        var namespace: String
        var device: String
        var verb: String
        var object: String
        var command: String
    }
    struct Class: Encodable {
        var name: String
        var classid: String
        var rate: UInt64
        var ceil: UInt64
        var burst: UInt64
        var cburst: UInt64
        var priority: UInt32
        var quantum: UInt32
        var leaf: String
        var cgroup: String?
        var isDefault: Bool
        /// "net_cls", "cgroup2 path" or "unmatched traffic": the mechanism.
        var classifiedBy: String
        /// How its processes' packets will get into it once the plan is applied, in the words of
        /// `status --json`'s `path` ("sock_create", "daemon+net_cls", "net_cls", "cgroup2 path",
        /// "unmatched traffic").
        var path: String
        /// The cgroup v2 paths of a class classified by path.
        var cgroup2Paths: [String]?
    }
    struct Namespace: Encodable {
        var name: String
        var netns: String
        var device: String
        var handle: String
        var classifier: String
        var egress: UInt64
        var ingress: UInt64?
        var classes: [Class]
    }
    var policy: String
    var notes: [String]
    var capabilities: KernelCapabilities
    var namespaces: [Namespace]
    var operations: [Op]

    init(policy: String, plan: PlanResult) {
        self.policy = policy
        notes = plan.desired.notes
        capabilities = plan.capabilities
        operations = plan.operations.map {
            Op(namespace: $0.namespace, device: $0.device, verb: $0.verb, object: $0.object, command: $0.command)
        }
        namespaces = plan.desired.namespaces.map { ns in
            let paths = Differ.classPaths(ns, plan.observed, after: plan.operations)
            return Namespace(
                name: ns.name, netns: ns.target.description,
                device: plan.observed.namespaces[ns.name]?.device ?? ns.device ?? "", handle: "\(ns.qdisc.handle)",
                classifier: ns.classifier.rawValue, egress: ns.egress.bitsPerSecond, ingress: ns.ingress?.bitsPerSecond,
                classes: ns.classes.map { c in
                    Class(
                        name: c.displayName, classid: "\(c.spec.classid)", rate: c.spec.rate.bitsPerSecond,
                        ceil: c.spec.ceil.bitsPerSecond, burst: c.spec.burst.bytes, cburst: c.spec.cburst.bytes,
                        priority: c.spec.priority, quantum: c.spec.quantum, leaf: c.leaf.queue.description,
                        cgroup: c.classification == .netCls ? c.name.map { CgroupPaths.class($0, in: ns.name) } : nil,
                        isDefault: c.isDefault, classifiedBy: c.classification.rawValue, path: c.path(paths),
                        cgroup2Paths: c.classification == .cgroup2
                            ? c.match.cgroup.map { "/" + Cgroup2Rule.normalize($0) } : nil)
                })
        }
    }
}

/// Human-readable output. Plain columns, one line per change, the tc command each stands for.
enum Render {
    static func symbol(_ op: Operation) -> String {
        switch op.verb {
        case "add", "create": return "+"
        case "delete", "remove": return "-"
        case "move": return ">"
        default: return "~"
        }
    }

    static func pad(_ s: String, _ n: Int) -> String {
        s.count >= n ? s : s + String(repeating: " ", count: n - s.count)
    }

    static func table(_ rows: [[String]]) -> String {
        guard let first = rows.first else { return "" }
        let widths = (0..<first.count).map { i in rows.map { $0[i].count }.max() ?? 0 }
        return rows.map { r in
            r.enumerated().map { i, c in i == r.count - 1 ? c : pad(c, widths[i]) }.joined(separator: "  ")
        }.joined(separator: "\n")
    }

    static func plan(_ plan: PlanResult, policyPath: String) -> String {
        var out: [String] = []
        for n in plan.desired.notes { out.append("note: \(n)") }
        for ns in plan.desired.namespaces {
            let dev = plan.observed.namespaces[ns.name]?.device ?? ns.device ?? "?"
            out.append(
                "namespace \(ns.name): netns \(ns.target), dev \(dev), egress \(ns.egress), htb \(ns.qdisc.handle), "
                    + "classifier \(ns.classifier == .cgroup ? "cls_cgroup" : ns.classifier == .cgroup2 ? "cls_bpf (cgroup2 path, then net_cls)" : "cls_bpf")"
            )
            // The column `status` prints as "path", decided by the same function from the sock_create
            // map as it will be after these changes.
            let paths = Differ.classPaths(ns, plan.observed, after: plan.operations)
            var rows = [["  class", "classid", "rate", "ceil", "prio", "leaf", "path"]]
            for c in ns.classes {
                let by =
                    c.path(paths)
                    + (c.classification == .cgroup2
                        ? " " + c.match.cgroup.map { "/" + Cgroup2Rule.normalize($0) }.joined(separator: ",") : "")
                rows.append([
                    "  " + c.displayName + (c.isDefault ? " *" : ""), "\(c.spec.classid)", "\(c.spec.rate)",
                    "\(c.spec.ceil)", "\(c.spec.priority)", c.leaf.queue.description, by,
                ])
            }
            out.append(table(rows))
            if let i = ns.ingressPlan {
                let seen = plan.observed.namespaces[ns.name]?.ingress
                let where_ =
                    seen.map {
                        $0.placement == .peer
                            ? "on \($0.device), the veth peer in the host namespace"
                            : "on IFB \($0.device) (ingress of \(dev) redirected)"
                    } ?? "(no device found yet)"
                out.append("  ingress \(i.rate) \(where_)")
            }
            let ops = plan.operations.filter { $0.namespace == ns.name }
            if ops.isEmpty {
                out.append("  no changes")
            } else {
                out.append("  changes:")
                out += ops.map { "    \(symbol($0)) \($0.command)" }
            }
        }
        out.append(
            plan.operations.isEmpty
                ? "\(policyPath): the machine already matches the policy"
                : "\(policyPath): \(plan.operations.count) change(s) to apply (* = default class)")
        return out.joined(separator: "\n")
    }

    static func applied(_ r: ApplyReport, policyPath: String) -> String {
        var out = r.notes.map { "note: \($0)" }
        if r.performed.isEmpty {
            out.append("\(policyPath): no changes, the machine already matches the policy")
        } else {
            out += r.performed.map { "\(symbol($0)) \($0.command)" }
            out.append("\(policyPath): applied \(r.performed.count) change(s)")
        }
        if !r.vanished.isEmpty {
            out.append(
                "note: \(r.vanished.count) process(es) exited before they could be moved: \(r.vanished.map(String.init).joined(separator: " "))"
            )
        }
        return out.joined(separator: "\n")
    }

    static func reset(_ r: ResetReport, label: String) -> String {
        var out = r.performed.map { "\(symbol($0)) \($0.command)" }
        out += r.foreign.map { "note: left \($0)" }
        out.append(
            r.performed.isEmpty
                ? "\(label): nothing to remove" : "\(label): removed \(r.performed.count) object(s)")
        return out.joined(separator: "\n")
    }

    /// The first line of an error's description (policy errors can run to many lines).
    static func firstLine(_ error: any Error) -> String {
        String("\(error)".split(separator: "\n", maxSplits: 1).first ?? "")
    }

    static func bits(_ b: UInt64) -> String { Rate(bytesPerSecond: b / 8).description }

    static func human(_ b: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(b)
        var i = 0
        while v >= 1024 && i < units.count - 1 {
            v /= 1024
            i += 1
        }
        return i == 0 ? "\(b)B" : "\(Int(v * 10) / 10).\(Int(v * 10) % 10)\(units[i])"
    }

    static func throughput(_ b: UInt64) -> String {
        if b >= 1_000_000 { return "\(b / 1_000_000).\((b % 1_000_000) / 100_000)mbit" }
        if b >= 1000 { return "\(b / 1000)kbit" }
        return "\(b)bit"
    }

    /// One line per class classified by cgroup v2 path: its paths, their ids and whether the
    /// map holds them (net_cls classes are the rest, and say nothing).
    static func classifiedBy(_ classes: [ClassStatus]) -> [String] {
        classes.compactMap { c in
            guard let paths = c.cgroup2Paths else { return nil }
            let each = paths.map { p in
                if let by = p.shadowedBy { return "\(p.path) (taken by \(by))" }
                guard let id = p.id else { return "\(p.path) (does not exist yet)" }
                return "\(p.path) (id \(id)\(p.mapped ? "" : ", NOT MAPPED"))"
            }
            return "  \(c.name): classified by cgroup2 path: " + each.joined(separator: ", ")
        }
    }

    static func status(_ r: StatusReport) -> String {
        var out: [String] = []
        for ns in r.namespaces {
            if let o = ns.orphaned { out.append("namespace \(ns.name): ORPHANED: \(o)") }
            if let p = ns.problem {
                out.append("namespace \(ns.name): netns \(ns.netns): \(p)")
                continue
            }
            out.append(
                "namespace \(ns.name): netns \(ns.netns), dev \(ns.device), egress \(bits(ns.egress)), htb \(ns.handle), "
                    + "classifier \(ns.classifier == "cgroup" ? "cls_cgroup" : ns.classifier == "bpf" ? "cls_bpf" : "none")"
                    + (ns.applied ? "" : " (NOT APPLIED)"))
            if let c = ns.cgroup2Classifier {
                out.append(
                    "  cgroup2 classifier \(c.name): program id \(c.programID), map id \(c.mapID) with \(c.entries) "
                        + "cgroup(s) (bpftool map dump id \(c.mapID))")
            }
            if let r = ns.resolved { out.append("  \(r)" + (ns.hostDevice.map { ", host veth \($0)" } ?? "")) }
            var rows = [["  class", "classid", "rate", "ceil", "now", "bytes", "packets", "drops", "path", "pids"]]
            for c in ns.classes {
                rows.append([
                    "  " + c.name + (c.isDefault ? " *" : ""), c.classid, bits(c.rate), bits(c.ceil),
                    c.throughput.map(throughput) ?? "-", human(c.bytes), "\(c.packets)", "\(c.drops)", c.path,
                    c.pids.isEmpty ? "-" : c.pids.map(String.init).joined(separator: ","),
                ])
            }
            out.append(table(rows))
            out += classifiedBy(ns.classes)
            if let i = ns.ingressShaping {
                let where_ =
                    i.placement == "peer"
                    ? "egress of \(i.device), its veth peer in the host namespace"
                    : "IFB \(i.device) inside the namespace (ingress of \(ns.device) redirected)"
                out.append(
                    "  ingress \(bits(i.rate)) on the \(where_)\(i.applied ? "" : " (NOT APPLIED)"): now "
                        + "\(i.throughput.map(throughput) ?? "-"), \(human(i.bytes)), \(i.packets) packets, \(i.drops) drops"
                )
            }
        }
        return out.joined(separator: "\n")
    }
}

extension Render {
    /// `check`'s account of what this kernel does with the policy: how each class is classified
    /// (by cgroup v2 path or through net_cls) and every fallback the planner takes, with the
    /// kernel's reason (no cls_cgroup, no fq_codel, no cgroup2 classifier…). `capabilities` nil:
    /// not probed (the probe needs root), so only what the policy asks for is said.
    static func kernelSupport(_ policy: Policy, _ capabilities: KernelCapabilities?) -> [String] {
        guard let caps = capabilities else {
            let byPath = policy.namespaces.flatMap { ns in
                ns.classes.filter(\.match.isCgroupPathsOnly).map { "\(ns.name)/\($0.name)" }
            }
            return byPath.isEmpty
                ? []
                : [
                    "note: kernel support not probed (needs root): \(byPath.joined(separator: ", ")) would be "
                        + "classified by cgroup v2 path where the kernel can (cls_bpf, Linux 4.19, cgroup2 mounted)"
                ]
        }
        do {
            let desired = try Planner.plan(policy, capabilities: caps)
            var out = desired.notes.map { "note: \($0)" }
            for ns in desired.namespaces {
                let byPath = ns.classes.filter { $0.classification == .cgroup2 }.compactMap(\.name)
                if !byPath.isEmpty {
                    out.append(
                        "namespace \(ns.name): classified in the kernel by cgroup v2 path, nothing moved: "
                            + byPath.joined(separator: ", "))
                }
            }
            return out
        } catch {
            return ["error: this kernel cannot shape the policy: \(error)"]
        }
    }
}

extension Render {
    /// Why `classify` (and `run`, where it cannot enter the class's directory) cannot put a process
    /// into `c` through net_cls, with the command that does it instead; nil for a net_cls class.
    /// `mount`: where cgroup2 is mounted, when known.
    static func noNetClsCgroup(
        _ c: PlannedClass, _ namespace: String, target: NetnsTarget = .host, mount: String? = nil
    )
        -> String?
    {
        switch c.classification {
        case .netCls: return nil
        case .cgroup2:
            let paths = c.match.cgroup.map { "/" + Cgroup2Rule.normalize($0) }.joined(separator: ", ")
            let first = c.match.cgroup.first.map(Cgroup2Rule.normalize) ?? ""
            // cgroup v2 does not re-tag a moved process's sockets: moving a running one would shape
            // only the sockets it opens later, so the way in is to start the command there.
            return "class \(namespace)/\(c.displayName) is classified by cgroup v2 path (\(paths)), not through "
                + "net_cls, and a running process's sockets keep the cgroup they were opened in: start the "
                + "command inside that cgroup instead (netshape run, systemd-run --slice/--scope, or by hand: "
                + PathClassEntry.byHand(mount ?? "<cgroup2 mount>", first, target)
                + "); its sockets are then in the class from the first packet"
        case .unmatched:
            return "class \(namespace)/\(c.displayName) takes the traffic no other class does and has no cgroup: run "
                + "the command in the namespace outside the other classes' cgroups (ip netns exec …)"
        }
    }
}
