/// What `reset` will remove, and what it has to leave.
public struct ResetPlan: Sendable, Equatable {
    /// In order: processes back to the root cgroup, cgroups deepest first, trees, IFB and redirect,
    /// provisioned links and namespaces, bridges last.
    public var operations: [Operation]
    /// Objects that are not netshape's, found inside netshape's trees and directories: left as they are.
    public var foreign: [String]
    /// netshape's own objects that cannot go while something foreign is inside them.
    public var blocked: [String]

    public init(operations: [Operation] = [], foreign: [String] = [], blocked: [String] = []) {
        self.operations = operations
        self.foreign = foreign
        self.blocked = blocked
    }
}

extension Differ {
    /// The operations that remove everything netshape recorded creating for `namespaces`: member
    /// processes back to the root cgroup, the cgroups it made, the trees it owns (deleting a root qdisc
    /// removes every class, leaf and filter beneath it and restores the kernel's default), the IFB and
    /// redirect, and what `provision` created. Works from the ownership record alone.
    ///
    /// `adopt` names, per namespace, the handle of a tree netshape would build there: a root HTB with
    /// that handle and netshape's classifier filter is removed even when its record was lost.
    ///
    /// `sockCreate` false leaves the sock_create map to the caller: `apply` retiring entries plans
    /// their rules together with the ones the policy keeps (`DiffOptions.retiring`).
    public static func resetPlan(
        namespaces: [String], _ observed: ObservedState, adopt: [String: TCHandle] = [:], sockCreate: Bool = true
    ) -> ResetPlan {
        // Rules first: a socket created meanwhile must not get a classid whose class is going.
        var plan = ResetPlan(operations: sockCreate ? resetSockCreate(namespaces: namespaces, observed) : [])
        var bridges: [(String, String)] = []
        for name in namespaces {
            let dir = CgroupPaths.namespace(name)
            let seen = observed.namespaces[name]
            let owned = observed.ownership.namespaces[name]
            let inside = observed.cgroups.values.filter { $0.path == dir || $0.path.hasPrefix(dir + "/") }
                .sorted(by: deepestFirst)
            // A cgroup can go when netshape made it and everything inside it goes too. (The record's
            // list as a set: one search of it per cgroup is quadratic on a 10 000-class tree.)
            var removable = Set<String>()
            let recorded = owned?.cgroups.map(Set.init)
            for cg in inside {
                let mine =
                    owned.map { o in recorded.map { $0.contains(cg.path) } ?? o.created(cgroup: cg.path, entry: name) }
                    ?? (adopt[name] != nil)
                let stuck = cg.children.filter { !removable.contains(cg.path + "/" + $0) }
                if !mine {
                    plan.foreign.append(
                        "cgroup \(cg.path) (\(cg.pids.count) process(es)): not created by netshape")
                } else if !stuck.isEmpty {
                    plan.blocked.append(
                        "cgroup \(cg.path): holds cgroups netshape did not create (\(stuck.sorted().joined(separator: ", ")))"
                    )
                    for child in stuck where observed.cgroups[cg.path + "/" + child] == nil {
                        plan.foreign.append("cgroup \(cg.path)/\(child): not created by netshape")
                    }
                } else {
                    removable.insert(cg.path)
                }
            }
            for cg in inside where removable.contains(cg.path) {
                for pid in cg.pids {
                    let comm = seen?.processes.first { $0.pid == pid }?.comm ?? "?"
                    plan.operations.append(
                        Operation(namespace: name, action: .moveProcess(pid: pid, comm: comm, from: cg.path, to: "")))
                }
            }
            for cg in inside where removable.contains(cg.path) {
                plan.operations.append(
                    Operation(namespace: name, action: .removeCgroup(path: cg.path, classid: cg.classid)))
            }
            // Deleting a root qdisc (or a namespace) takes everything in it: a tree holding classes or
            // filters netshape did not create stays, and so does a provisioned namespace around it.
            var treeBlocked = false
            if let seen, seen.problem == nil {
                if let root = seen.configuredRoot,
                    observed.ownership.owns(root, in: seen)
                        || (owned?.egress == nil && adopt[name] == root.handle && root.kind == "htb"
                            && seen.filters.contains { $0.priority == FilterSpec.netshapePriority })
                {
                    let tree = owned?.egress
                    let foreignClasses = seen.classes.map(\.spec.classid).filter {
                        $0.major == root.handle.major && !(tree?.created($0) ?? true)
                    }
                    let foreignFilters = Set(
                        seen.filters.filter { $0.priority != FilterSpec.netshapePriority }.map {
                            "filter \($0.kind) prio \($0.priority)"
                        })
                    let strangers = foreignClasses.sorted().map { "class \($0)" } + foreignFilters.sorted()
                    if strangers.isEmpty {
                        plan.operations.append(
                            Operation(
                                namespace: name, device: seen.device,
                                action: .deleteRootQdisc(
                                    HTBQdiscSpec(handle: root.handle, defaultMinor: root.htbDefault ?? 0))))
                    } else {
                        treeBlocked = true
                        plan.blocked.append(
                            "HTB tree \(root.handle) on \(seen.device) of namespace \(name): holds "
                                + strangers.joined(separator: ", ") + " that netshape did not create")
                        plan.foreign += strangers.map {
                            "\($0) on \(seen.device) of namespace \(name): not created by netshape"
                        }
                    }
                }
                if let ing = seen.ingress, ing.ifindex != 0 {
                    if let root = ing.configuredRoot,
                        owned?.ingress?.tree?.owns(root, netnsID: ing.netnsID, ifindex: ing.ifindex) == true
                    {
                        plan.operations.append(
                            Operation(
                                namespace: name, device: ing.device, link: .ingress,
                                action: .deleteRootQdisc(
                                    HTBQdiscSpec(handle: root.handle, defaultMinor: root.htbDefault ?? 0))))
                    }
                    if ing.placement == .ifb, ing.ingressQdisc != nil, owned?.ingress?.redirectFrom == seen.device {
                        plan.operations.append(
                            Operation(
                                namespace: name, device: seen.device, action: .deleteIngressRedirect(ifb: ing.device)))
                    }
                    if ing.placement == .ifb, owned?.ingress?.ifb == ing.device {
                        plan.operations.append(
                            Operation(namespace: name, device: ing.device, action: .deleteIFB(ing.device)))
                    }
                }
            }
            if treeBlocked, let prov = owned?.provisioned, prov.netns != nil || prov.hostDevice != nil {
                plan.blocked.append("the network namespace netshape provisioned for \(name): it holds that tree")
            } else if let prov = owned?.provisioned {
                if let netns = prov.netns, observed.provision[name]?.netnsExists == true {
                    // Deleting the namespace destroys its veth end, and with it the host-side peer.
                    plan.operations.append(Operation(namespace: name, link: .host, action: .deleteNetns(netns)))
                } else if let h = prov.hostDevice, observed.provision[name]?.hostDeviceExists == true {
                    plan.operations.append(
                        Operation(namespace: name, device: h, link: .host, action: .deleteVeth(host: h)))
                }
                if let b = prov.bridge { bridges.append((name, b)) }
            }
        }
        // A bridge goes last, and only when no namespace outside this reset still uses it.
        let leaving = Set(namespaces)
        let stillUsed = Set(
            observed.ownership.namespaces.filter { !leaving.contains($0.key) }.compactMap {
                $0.value.provisioned?.bridge
            })
        var removed = Set<String>()
        for (name, b) in bridges
        where !stillUsed.contains(b) && observed.provision[name]?.bridgeExists == true
            && removed.insert(b).inserted
        {
            plan.operations.append(Operation(namespace: name, device: b, link: .host, action: .deleteBridge(b)))
        }
        return plan
    }
}
