import NetshapeCore

extension Validator {
    // MARK: - Namespaces

    mutating func namespace(_ t: PolicyTable, _ path: [String]) -> NamespacePolicy? {
        checkKeys(t, path, Self.namespaceKeys, what: "[[namespace]]")
        let name = string(t, path, "name")
        if name == nil && t["name"] == nil && !wasSuggested(path, "name") { error(path, "[[namespace]] needs a name") }
        if let n = name, !isValidName(n) {
            error(
                path + ["name"],
                "namespace name \"\(n)\" is not allowed: use 1-32 of a-z 0-9 _ . - starting with a letter or digit (it becomes a cgroup directory)"
            )
        }
        let label = "namespace \"\(name ?? "?")\""
        var target = NetnsTarget.named(name ?? "")
        if let n = string(t, path, "netns") {
            if let tg = netnsTarget(n) {
                target = tg
            } else {
                error(
                    path + ["netns"],
                    "\(label): netns must be \"host\", an `ip netns` name, an absolute path to a namespace file, \"pid:N\", \"docker:NAME\" or \"podman:NAME\" (a container name or id); \"\(n)\" is none of these"
                )
            }
        }
        var selector: ContainerSelector?
        if let c = string(t, path, "containers") {
            selector = containerSelector(c, path + ["containers"], label: label)
            if t["netns"] != nil {
                error(
                    path + ["containers"],
                    "\(label): containers and netns exclude each other (each container is its own netns)")
            }
            if let n = name, n.count > containerEntryNameLimit {
                error(
                    path + ["name"],
                    "\(label): a containers entry's name has at most \(containerEntryNameLimit) characters, because each container's instance is named NAME-SHORTID (12 digits)"
                )
            }
            // Never resolvable (container names have no '='), so an unexpanded template can only ever be "not running".
            if let sel = selector { target = sel.runtime.target(sel.description) }
        }
        var device: String?
        if let d = string(t, path, "device") {
            if isValidInterfaceName(d) {
                device = d
            } else {
                error(
                    path + ["device"],
                    "\(label): \"\(d)\" is not a valid interface name (1-15 characters, no '/', ':' or blanks)")
            }
        }
        var egress: Rate?
        if t["egress"] == nil {
            if !wasSuggested(path, "egress") { error(path, "\(label) needs an egress rate (egress = \"100mbit\")") }
        } else {
            egress = rate(t, path, "egress", of: nil, label: label)
        }
        let ingress = t["ingress"] == nil ? nil : rate(t, path, "ingress", of: nil, label: label)
        let defaultClass = string(t, path, "default")
        let leafChoice = leaf(t, path)
        var provision: Provision?
        if let p = t["provision"] {
            if let pt = p.table {
                provision = self.provision(pt, path + ["provision"], nsName: name ?? "", label: label)
            } else {
                error(path + ["provision"], "\(label): provision must be a table ([namespace.provision])")
            }
        }

        var provisionable = true
        if case .named = target {} else { provisionable = false }
        if provision != nil && !provisionable {
            error(
                path + ["netns"],
                "\(label): provision creates an `ip netns` namespace, so netns must be such a name (not host, a path or pid:N)"
            )
        }
        var classes: [ClassPolicy] = []
        // Names as written, including those of classes rejected for another reason, so that one
        // mistake in a class does not also report `default` as naming no class.
        var writtenNames: [String] = []
        if let c = t["class"] {
            if let arr = c.array, arr.allSatisfy({ $0.table != nil }) {
                for (i, item) in arr.enumerated() {
                    if let n = item.table?["name"]?.string { writtenNames.append(n) }
                    if let cls = self.class(
                        item.table ?? PolicyTable(), path + ["class", String(i)], egress: egress, nsLabel: label)
                    {
                        classes.append(cls)
                    }
                }
            } else {
                error(path + ["class"], "\(label): class must be an array of tables ([[namespace.class]])")
            }
        }
        var seen = Set<String>()
        for (i, c) in classes.enumerated() where !seen.insert(c.name).inserted {
            error(path + ["class", String(i), "name"], "\(label): duplicate class name \"\(c.name)\"")
        }
        if classes.count > Planner.maxClassesPerNamespace {
            error(
                path,
                "\(label) has \(classes.count) classes; one device offers \(Planner.maxClassesPerNamespace) classids")
        }
        if let d = defaultClass {
            if !writtenNames.contains(d) {
                var msg = "\(label): default = \"\(d)\" names no class of this namespace"
                if let s = suggestion(for: d, among: writtenNames) { msg += "; did you mean \"\(s)\"?" }
                error(path + ["default"], msg)
            }
        } else if let ruled = classes.first(where: { !$0.match.isEmpty }) {
            error(
                path,
                "\(label): class \"\(ruled.name)\" has match rules, so the namespace needs default = \"<class>\" for the traffic no rule matches"
            )
        }
        if let e = egress {
            // Saturating: each rate is at most HTBLimits.maxRate, but the count of classes is the user's.
            let sum = classes.reduce(UInt64(0)) {
                let (s, o) = $0.addingReportingOverflow($1.rate.bytesPerSecond)
                return o ? UInt64.max : s
            }
            if sum > e.bytesPerSecond {
                error(
                    path + ["egress"],
                    "\(label): the classes' rates add up to \(Rate(bytesPerSecond: sum)), more than egress \(e): HTB could not guarantee them"
                )
            }
        }
        guard let n = name, let e = egress else { return nil }
        return NamespacePolicy(
            name: n, netns: target, device: device, egress: e, ingress: ingress,
            defaultClass: defaultClass, leaf: leafChoice, provision: provision, classes: classes,
            containers: selector)
    }

    /// `docker:label=KEY=VALUE,label=KEY`: a runtime and one or more labels, all required.
    mutating func containerSelector(_ s: String, _ path: [String], label: String) -> ContainerSelector? {
        let usage =
            "\(label): containers must be \"docker:label=KEY=VALUE\" or \"podman:label=KEY\" (several labels comma-separated, all required)"
        guard let colon = s.firstIndex(of: ":"), let runtime = ContainerRuntimeKind(rawValue: String(s[..<colon]))
        else {
            error(path, "\(usage); \"\(s)\" names no runtime")
            return nil
        }
        var labels: [String: String?] = [:]
        for term in s[s.index(after: colon)...].split(separator: ",", omittingEmptySubsequences: false) {
            guard term.hasPrefix("label="), term.count > 6 else {
                error(path, "\(usage); \"\(term)\" is not label=KEY or label=KEY=VALUE")
                return nil
            }
            let kv = term.dropFirst(6)
            let key = kv.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let k = key.first, !k.isEmpty, !k.contains(where: { $0 == " " || $0 == "," }) else {
                error(path, "\(usage); \"\(term)\" has an empty or blank label key")
                return nil
            }
            labels[String(k)] = key.count > 1 ? String(key[1]) : nil
        }
        return ContainerSelector(runtime: runtime, labels: labels)
    }

    func netnsTarget(_ s: String) -> NetnsTarget? {
        if s == "host" { return .host }
        if s.hasPrefix("pid:") {
            guard let p = Int32(s.dropFirst(4)), p > 0 else { return nil }
            return .pid(p)
        }
        // A NUL would silently cut the path or name where the kernel reads it.
        if s.utf8.contains(0) { return nil }
        if s.hasPrefix("/") { return s.split(separator: "/").contains("..") ? nil : .path(s) }
        for runtime in ContainerRuntimeKind.allCases where s.hasPrefix(runtime.rawValue + ":") {
            // Docker's and Podman's name rule ([a-zA-Z0-9][a-zA-Z0-9_.-]*), which a hex id also meets.
            let ref = s.dropFirst(runtime.rawValue.count + 1)
            guard let first = ref.first, first.isASCII, first.isLetter || first.isNumber,
                ref.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "_.-".contains($0)) })
            else { return nil }
            return runtime.target(String(ref))
        }
        // `ip netns` names are files in /run/netns: no '/', not '.' or '..' (iproute2 netns_name_valid).
        guard !s.isEmpty, !s.contains("/"), s != ".", s != "..", s.utf8.count <= 255 else { return nil }
        return .named(s)
    }

    mutating func provision(_ t: PolicyTable, _ path: [String], nsName: String, label: String) -> Provision? {
        checkKeys(t, path, Self.provisionKeys, what: "[namespace.provision]")
        let address = string(t, path, "address")
        if let a = address, !isCIDR(a) {
            error(
                path + ["address"],
                "\(label): address \"\(a)\" is not an IPv4 or IPv6 address with a prefix length (198.18.10.2/24)")
        }
        let hostAddress = string(t, path, "host_address")
        if let a = hostAddress, !isCIDR(a) {
            error(path + ["host_address"], "\(label): host_address \"\(a)\" is not an address with a prefix length")
        }
        let gateway = string(t, path, "gateway")
        if let g = gateway, !isIP(g) { error(path + ["gateway"], "\(label): gateway \"\(g)\" is not an IP address") }
        let bridge = string(t, path, "bridge")
        if let b = bridge, !isValidInterfaceName(b) {
            error(path + ["bridge"], "\(label): bridge \"\(b)\" is not a valid interface name")
        }
        if bridge != nil && hostAddress != nil {
            error(
                path + ["bridge"],
                "\(label): give either host_address or bridge, not both (the address belongs on the bridge)")
        }
        var hostDevice = "ns-\(nsName)"
        if let h = string(t, path, "host_device") {
            if isValidInterfaceName(h) {
                hostDevice = h
            } else {
                error(path + ["host_device"], "\(label): host_device \"\(h)\" is not a valid interface name")
            }
        } else if !isValidInterfaceName(hostDevice) {
            error(
                path,
                "\(label): the default host_device \"\(hostDevice)\" is longer than 15 characters: set host_device")
        }
        return Provision(
            address: address, hostDevice: hostDevice, hostAddress: hostAddress, bridge: bridge, gateway: gateway)
    }
}
