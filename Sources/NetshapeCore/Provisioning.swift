extension Differ {
    /// The provisioning that must happen before anything can be shaped: namespaces, veth pairs,
    /// bridges, addresses and routes that `provision` describes and that are missing. Never touches a
    /// namespace that exists but was not created by netshape.
    public static func provisioning(_ desired: DesiredState, _ observed: ObservedState) -> (
        ops: [Operation], notes: [String]
    ) {
        var ops: [Operation] = []
        var notes: [String] = []
        var bridgesCreated = Set<String>()
        for ns in desired.namespaces {
            guard let prov = ns.provision, case .named(let netns) = ns.target else { continue }
            let seen =
                observed.provision[ns.name]
                ?? ObservedProvision(netnsExists: false, hostDeviceExists: false, bridgeExists: false)
            let ours = observed.ownership.namespaces[ns.name]?.provisioned?.netns == netns
            let dev = ns.device ?? "eth0"
            if seen.netnsExists && !ours {
                notes.append(
                    "namespace \(ns.name): network namespace \(netns) exists and was not created by netshape: provision left it as it is"
                )
                continue
            }
            if seen.netnsExists && seen.hostDeviceExists { continue }
            // Each operation names the namespace it acts in (ifindex 0: devices are found by name,
            // most of them do not exist yet), so the kernel port needs nothing from `observe`.
            func host(_ device: String, _ a: Operation.Action) -> Operation {
                var op = Operation(namespace: ns.name, device: device, link: .host, action: a)
                op.target = ResolvedTarget(netns: .host, ifindex: 0)
                return op
            }
            func inside(_ device: String, _ a: Operation.Action) -> Operation {
                var op = Operation(namespace: ns.name, device: device, link: .namespace, action: a)
                op.target = ResolvedTarget(netns: ns.target, ifindex: 0)
                return op
            }
            if !seen.netnsExists { ops.append(host("", .createNetns(netns))) }
            ops.append(host(prov.hostDevice, .createVeth(host: prov.hostDevice, peer: dev, netns: netns)))
            ops.append(inside("lo", .linkUp))
            if let a = prov.address { ops.append(inside(dev, .addAddress(a))) }
            ops.append(inside(dev, .linkUp))
            if let b = prov.bridge {
                if !seen.bridgeExists && !bridgesCreated.contains(b) {
                    ops.append(host(b, .createBridge(b)))
                    bridgesCreated.insert(b)
                }
                ops.append(host(prov.hostDevice, .attachToBridge(bridge: b)))
            } else if let a = prov.hostAddress {
                ops.append(host(prov.hostDevice, .addAddress(a)))
            }
            ops.append(host(prov.hostDevice, .linkUp))
            if let g = prov.gateway { ops.append(inside(dev, .addDefaultRoute(gateway: g))) }
        }
        return (ops, notes)
    }

}
