import NetshapeCore
import Testing

@testable import NetshapePolicy

/// A minimal valid policy; cases below replace one line to break exactly one rule.
let base = """
    version = 1

    [[namespace]]
    name = "web"
    egress = "100mbit"
    default = "other"

    [[namespace.class]]
    name = "frontend"
    rate = "60mbit"
    match.comm = ["nginx"]

    [[namespace.class]]
    name = "other"
    rate = "10mbit"
    """

func parse(_ text: String) throws -> Policy { try PolicyParser.parse(text, file: "p.toml") }

func firstDiagnostic(_ text: String) -> PolicyDiagnostic? {
    do {
        _ = try parse(text)
        return nil
    } catch {
        return (error as? PolicyError)?.diagnostics.first
    }
}

@Suite struct PolicyParserTests {
    @Test func validBasePolicyParses() throws {
        let p = try parse(base)
        #expect(p.namespaces.count == 1)
        let ns = try #require(p.namespaces.first)
        #expect(ns.netns == .named("web"))
        #expect(ns.egress == .mbit(100))
        #expect(ns.classes.map(\.name) == ["frontend", "other"])
        #expect(ns.classes[0].match.comm == ["nginx"])
        #expect(ns.classes[0].priority == 4)
        #expect(ns.classes[1].ceil == nil)
    }

    @Test func shippedExamplePolicyIsValid() throws {
        let text = try #require(readFile(#filePath.replacingLastComponents(3, with: "policies/web.toml")))
        let p = try parse(text)
        let web = try #require(p.namespace("web"))
        #expect(web.ingress == .mbit(40))
        #expect(web.class("backup")?.match.exe == ["/usr/bin/rsync", "/usr/bin/borg"])
        #expect(web.class("backup")?.match.user == [.name("backup")])
    }

    struct Rejection: CustomTestStringConvertible, Sendable {
        let rule: String
        let text: String
        let line: Int
        let column: Int
        let contains: String
        var testDescription: String { rule }
    }

    static let rejections: [Rejection] = [
        Rejection(
            rule: "TOML syntax", text: base.replacingOccurrences(of: "rate = \"60mbit\"", with: "rate = \"60mbit"),
            line: 10, column: 8, contains: "unterminated string"),
        Rejection(
            rule: "unknown key with suggestion",
            text: base.replacingOccurrences(of: "rate = \"60mbit\"", with: "rat = \"60mbit\""),
            line: 10, column: 1, contains: "did you mean 'rate'"),
        Rejection(
            rule: "unknown top-level key", text: "verison = 1\n" + base, line: 1, column: 1,
            contains: "did you mean 'version'"),
        Rejection(
            rule: "wrong type", text: base.replacingOccurrences(of: "egress = \"100mbit\"", with: "egress = true"),
            line: 5, column: 1, contains: "must be a rate"),
        Rejection(
            rule: "unparsable rate", text: base.replacingOccurrences(of: "\"60mbit\"", with: "\"60mbitt\""),
            line: 10, column: 1, contains: "is not a rate"),
        Rejection(
            rule: "zero rate", text: base.replacingOccurrences(of: "\"60mbit\"", with: "\"0mbit\""),
            line: 10, column: 1, contains: "is zero"),
        Rejection(
            rule: "ceil below rate",
            text: base.replacingOccurrences(of: "rate = \"60mbit\"", with: "rate = \"60mbit\"\nceil = \"50mbit\""),
            line: 11, column: 1, contains: "below rate"),
        Rejection(
            rule: "ceil above egress",
            text: base.replacingOccurrences(of: "rate = \"60mbit\"", with: "rate = \"60mbit\"\nceil = \"1gbit\""),
            line: 11, column: 1, contains: "above the namespace egress"),
        Rejection(
            rule: "sum of rates above egress", text: base.replacingOccurrences(of: "\"60mbit\"", with: "\"95mbit\""),
            line: 5, column: 1, contains: "add up to 105mbit"),
        Rejection(
            rule: "duplicate class name", text: base + "\n\n[[namespace.class]]\nname = \"other\"\nrate = \"1mbit\"\n",
            line: 18, column: 1, contains: "duplicate class name"),
        Rejection(
            rule: "duplicate namespace name", text: base + "\n\n[[namespace]]\nname = \"web\"\negress = \"1mbit\"\n",
            line: 18, column: 1, contains: "duplicate namespace name"),
        Rejection(
            rule: "default names no class",
            text: base.replacingOccurrences(of: "default = \"other\"", with: "default = \"othre\""),
            line: 6, column: 1, contains: "did you mean \"other\""),
        Rejection(
            rule: "default missing with rules", text: base.replacingOccurrences(of: "default = \"other\"\n", with: ""),
            line: 3, column: 1, contains: "needs default"),
        Rejection(
            rule: "path traversal in class name",
            text: base.replacingOccurrences(of: "name = \"frontend\"", with: "name = \"../../etc\""),
            line: 9, column: 1, contains: "is not allowed"),
        Rejection(
            rule: "slash in namespace name",
            text: base.replacingOccurrences(of: "name = \"web\"", with: "name = \"a/b\""),
            line: 4, column: 1, contains: "is not allowed"),
        Rejection(
            rule: "priority out of range",
            text: base.replacingOccurrences(of: "rate = \"10mbit\"", with: "rate = \"10mbit\"\npriority = 8"),
            line: 16, column: 1, contains: "priority must be an integer from 0"),
        Rejection(
            rule: "version", text: base.replacingOccurrences(of: "version = 1", with: "version = 2"),
            line: 1, column: 1, contains: "version must be 1"),
        Rejection(
            rule: "bad classifier", text: base + "\n[settings]\nclassifier = \"u32\"\n", line: 17, column: 1,
            contains: "classifier must be one of"),
        Rejection(
            rule: "bad leaf", text: base + "\n[settings]\nleaf = \"fq-codel\"\n", line: 17, column: 1,
            contains: "did you mean \"fq_codel\""),
        Rejection(
            rule: "bad regex",
            text: base.replacingOccurrences(of: "match.comm = [\"nginx\"]", with: "match.cmdline = [\"(unclosed\"]"),
            line: 11, column: 1, contains: "not a valid regular expression"),
        Rejection(
            rule: "unknown match key", text: base.replacingOccurrences(of: "match.comm", with: "match.command"),
            line: 11, column: 1, contains: "did you mean 'comm'"),
        Rejection(
            rule: "relative exe",
            text: base.replacingOccurrences(of: "match.comm = [\"nginx\"]", with: "match.exe = [\"nginx\"]"),
            line: 11, column: 1, contains: "absolute path"),
        Rejection(
            rule: "comm longer than the kernel keeps",
            text: base.replacingOccurrences(of: "\"nginx\"", with: "\"a-very-long-process-name\""),
            line: 11, column: 1, contains: "longer than 15"),
        Rejection(
            rule: "percentage of egress itself", text: base.replacingOccurrences(of: "\"100mbit\"", with: "\"50%\""),
            line: 5, column: 1, contains: "cannot be a percentage"),
        Rejection(
            rule: "burst above one second",
            text: base.replacingOccurrences(of: "rate = \"10mbit\"", with: "rate = \"10mbit\"\nburst = \"512mb\""),
            line: 16, column: 1, contains: "unshaped for seconds"),
        Rejection(
            rule: "burst below a frame",
            text: base.replacingOccurrences(of: "rate = \"10mbit\"", with: "rate = \"10mbit\"\nburst = \"100b\""),
            line: 16, column: 1, contains: "smaller than one full-size"),
        Rejection(
            rule: "bad netns",
            text: base.replacingOccurrences(of: "name = \"web\"", with: "name = \"web\"\nnetns = \"pid:x\""),
            line: 5, column: 1, contains: "netns must be"),
        Rejection(
            rule: "bad device",
            text: base.replacingOccurrences(
                of: "name = \"web\"", with: "name = \"web\"\ndevice = \"a-very-long-device-name\""),
            line: 5, column: 1, contains: "not a valid interface name"),
        Rejection(
            rule: "missing egress", text: base.replacingOccurrences(of: "egress = \"100mbit\"\n", with: ""),
            line: 3, column: 1, contains: "needs an egress"),
        Rejection(
            rule: "missing rate", text: base.replacingOccurrences(of: "rate = \"10mbit\"", with: ""),
            line: 13, column: 1, contains: "needs a rate"),
        Rejection(
            rule: "bridge and host_address together",
            text: base + "\n[namespace.provision]\nhost_address = \"198.18.0.1/24\"\nbridge = \"br0\"\n",
            line: 18, column: 1, contains: "not both"),
        Rejection(
            rule: "inline table key",
            text: base.replacingOccurrences(
                of: "match.comm = [\"nginx\"]", with: "match = { comm = [\"nginx\"], uesr = [\"x\"] }"),
            line: 11, column: 29, contains: "did you mean 'user'"),
    ]

    @Test(arguments: rejections)
    func rejectsWithPosition(_ r: Rejection) throws {
        let d = try #require(firstDiagnostic(r.text), "expected \(r.rule) to be rejected")
        #expect(d.message.contains(r.contains), "\(d.message)")
        #expect(d.position == SourcePosition(line: r.line, column: r.column), "\(d)")
        #expect(d.description.hasPrefix("p.toml:\(r.line):\(r.column): error: "))
    }

    @Test func reportsEveryProblemInFileOrder() throws {
        let text = base.replacingOccurrences(of: "\"60mbit\"", with: "\"x\"").replacingOccurrences(
            of: "\"10mbit\"", with: "\"y\"")
        do {
            _ = try parse(text)
            Issue.record("expected a rejection")
        } catch {
            #expect((error as? PolicyError)?.diagnostics.map(\.position.line) == [10, 15])
        }
    }

    @Test func tooManyClassesIsRejected() throws {
        var text = "version = 1\n[[namespace]]\nname = \"n\"\negress = \"1tbit\"\n"
        for i in 0...Planner.maxClassesPerNamespace {
            text += "[[namespace.class]]\nname = \"c\(i)\"\nrate = \"8bit\"\n"
        }
        let d = try #require(firstDiagnostic(text))
        #expect(d.message.contains("classids"))
        #expect(d.position.line == 2)
    }

    @Test func percentagesAreOfTheNamespaceEgress() throws {
        let p = try parse(base.replacingOccurrences(of: "\"60mbit\"", with: "\"30%\""))
        #expect(p.namespaces[0].classes[0].rate == .mbit(30))
    }

    @Test func netnsTargets() throws {
        func target(_ s: String) throws -> NetnsTarget {
            try parse(base.replacingOccurrences(of: "name = \"web\"", with: "name = \"web\"\nnetns = \"\(s)\""))
                .namespaces[0].netns
        }
        #expect(try target("host") == .host)
        #expect(try target("pid:42") == .pid(42))
        #expect(try target("/var/run/docker/netns/abc") == .path("/var/run/docker/netns/abc"))
        #expect(try target("blue") == .named("blue"))
    }

    @Test func matchKeysTakeScalarsOrArrays() throws {
        let text = base.replacingOccurrences(
            of: "match.comm = [\"nginx\"]",
            with:
                "match.comm = \"nginx\"\nmatch.user = [\"www-data\", 33]\nmatch.pid = [10, 20]\nmatch.cgroup = \"system.slice/nginx.service\""
        )
        let m = try parse(text).namespaces[0].classes[0].match
        #expect(m.comm == ["nginx"])
        #expect(m.user == [.name("www-data"), .id(33)])
        #expect(m.pid == [10, 20])
        #expect(m.cgroup == ["system.slice/nginx.service"])
    }

    @Test func provisionDefaults() throws {
        let p = try parse(
            base + "\n[namespace.provision]\naddress = \"198.18.10.2/24\"\nhost_address = \"198.18.10.1/24\"\n")
        let prov = try #require(p.namespaces[0].provision)
        #expect(prov.hostDevice == "ns-web")
        #expect(prov.address == "198.18.10.2/24")
    }
}

extension String {
    func replacingOccurrences(of target: String, with replacement: String) -> String {
        var out = ""
        var rest = self[...]
        while let r = rest.firstRange(of: target) {
            out += rest[..<r.lowerBound] + replacement
            rest = rest[r.upperBound...]
        }
        return out + rest
    }

    /// `/a/b/c/d.swift` with n = 3 → `/a/` + path.
    func replacingLastComponents(_ n: Int, with path: String) -> String {
        var parts = split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(n)
        return parts.joined(separator: "/") + "/" + path
    }
}

func readFile(_ path: String) -> String? {
    guard let f = fopen(path, "r") else { return nil }
    defer { fclose(f) }
    var bytes: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = fread(&buf, 1, buf.count, f)
        if n <= 0 { break }
        bytes += buf[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}

#if canImport(Glibc)
    import Glibc
#endif

/// `docker:` / `podman:` targets and `containers` selectors (issue 12).
@Suite struct ContainerPolicyTests {
    func one(_ lines: String) -> String {
        "version = 1\n[[namespace]]\nname = \"web\"\negress = \"20mbit\"\n" + lines + "\n"
    }

    @Test func containerTargetsParse() throws {
        #expect(try parse(one("netns = \"docker:web-1\"")).namespaces[0].netns == .docker("web-1"))
        #expect(try parse(one("netns = \"podman:db.2_x\"")).namespaces[0].netns == .podman("db.2_x"))
        let id = String(repeating: "ab", count: 32)
        #expect(try parse(one("netns = \"docker:\(id)\"")).namespaces[0].netns == .docker(id))
    }

    @Test(arguments: ["docker:", "docker:-x", "docker:a/b", "podman:a b", "docker:é"])
    func badContainerReferencesAreRejected(_ target: String) throws {
        let d = try #require(firstDiagnostic(one("netns = \"\(target)\"")))
        #expect(d.key == "namespace.netns")
        #expect(d.message.contains("\"docker:NAME\""))
    }

    @Test func selectorParses() throws {
        let p = try parse(one("containers = \"docker:label=tier=batch,label=team,label=a=b=c\""))
        let sel = try #require(p.namespaces[0].containers)
        #expect(sel == ContainerSelector(runtime: .docker, labels: ["tier": "batch", "team": nil, "a": "b=c"]))
        // Never a real container name: an unexpanded template can only be "not running".
        #expect(p.namespaces[0].netns == .docker(sel.description))
    }

    @Test(arguments: [
        ("containers = \"docker:tier=batch\"", "is not label=KEY"),
        ("containers = \"lxc:label=a\"", "names no runtime"),
        ("containers = \"docker:label=\"", "is not label=KEY"),
        ("containers = \"docker:label==x\"", "empty or blank label key"),
        ("containers = \"docker:label=a\"\nnetns = \"host\"", "exclude each other"),
    ])
    func badSelectorsAreRejected(_ lines: String, _ message: String) throws {
        let d = try #require(firstDiagnostic(one(lines)))
        #expect(d.message.contains(message), "\(d.message)")
    }

    @Test func aSelectorEntryNameLeavesRoomForTheShortID() throws {
        let long = String(repeating: "n", count: containerEntryNameLimit + 1)
        let text =
            "version = 1\n[[namespace]]\nname = \"\(long)\"\negress = \"1mbit\"\ncontainers = \"docker:label=a\"\n"
        let d = try #require(firstDiagnostic(text))
        #expect(d.message.contains("at most \(containerEntryNameLimit) characters"))
        let ok = String(repeating: "n", count: containerEntryNameLimit)
        #expect(throws: Never.self) { try parse(text.replacingOccurrences(of: long, with: ok)) }
    }
}

/// toml++ aborts the process on some deeply nested input (found by the fuzz test, seed 3273110827):
/// nesting is bounded before the TOML library sees the text.
@Suite struct NestingTests {
    @Test func deepNestingIsAnErrorWithAPosition() throws {
        let text = "version = 1\nx = " + String(repeating: "[", count: 300) + "}\n"
        do {
            _ = try PolicyParser.parse(text, file: "deep.toml")
            Issue.record("accepted")
        } catch let e as PolicyError {
            #expect(e.description.contains("deep.toml:2:21"), "\(e.description)")
            #expect(e.description.contains("nested more than"))
        }
    }

    /// toml++ asserts in `parse_key` on a table-array header whose name begins with `[`, in the
    /// release build too (fuzz seed 379350135): refused with a position before it sees the text.
    @Test(arguments: ["[[[a]]", "[[ [a]]", "[[[namespace]]]", "  [[\t[a]]"])
    func aTableArrayHeaderStartingWithABracketIsAnError(_ line: String) throws {
        do {
            _ = try PolicyParser.parse("version = 1\n" + line + "\n", file: "header.toml")
            Issue.record("accepted \(line)")
        } catch let e as PolicyError {
            #expect(e.description.hasPrefix("header.toml:2:"), "\(e.description)")
            #expect(e.description.contains("table-array header"), "\(e.description)")
        }
    }

    /// The same bytes inside a value, a string or a comment are not a header.
    @Test func bracketsThatAreNoHeaderPass() throws {
        let text = """
            version = 1
            # [[[a]]
            [settings]
            classifier = "auto"
            cgroup_root = \"\"\"
            [[[x]]\"\"\"
            """
        do {
            _ = try PolicyParser.parse(text, file: "ok.toml")
        } catch let e as PolicyError {
            #expect(!e.description.contains("table-array header"), "\(e.description)")
        }
        let array = try TOMLPrecheckProbe.bracketMessage("x = [\n[[1]]]\n")
        #expect(array == nil, "an array of arrays on its own line")
    }

    /// toml++ asserts on `}` where an array expects a value (fuzz seeds 3 and 3273110827).
    @Test(arguments: ["x = [}a\", 33]", "x = [1, }]", "x = [[1],}]", "x = {a = [}]}"])
    func aBraceWhereAnArrayExpectsAValueIsAnError(_ line: String) throws {
        do {
            _ = try PolicyParser.parse("version = 1\n" + line + "\n", file: "brace.toml")
            Issue.record("accepted \(line)")
        } catch let e as PolicyError {
            #expect(e.description.hasPrefix("brace.toml:2:"), "\(e.description)")
        }
    }

    @Test func ordinaryNestingAndBracketsInStringsPass() throws {
        let text = """
            version = 1
            # a comment with [[[[[[[[[[[[[[[[[[[[ brackets
            [[namespace]]
            name = "web"
            egress = "10mbit"
            default = "a"
            [[namespace.class]]
            name = "a"
            rate = "1mbit"
            match.cmdline = ["\\\\[x"]
            """
        #expect(try PolicyParser.parse(text, file: "ok.toml").namespaces.count == 1)
    }
}

/// The pre-screen alone, for texts that TOML itself may refuse for another reason.
enum TOMLPrecheckProbe {
    static func bracketMessage(_ text: String) throws -> String? { tomlSyntaxProblem(text)?.1 }
}
